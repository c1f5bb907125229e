//! The checks. Each takes what the MTA told us and returns findings; none of them picks an SMTP
//! reply (that is `policy`'s job).

pub mod sender_rules;
