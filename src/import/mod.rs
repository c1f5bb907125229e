//! Importers: bring the state and the rules of another greylisting daemon (milter-greylist,
//! postgrey) into mxsentry.
//!
//! Each importer reads its source with pure parsers and writes greylist entries only through
//! [`crate::admin::put_entries`] (which talks to the running daemon when there is one).

pub mod milter_greylist;
pub mod postgrey;
