//! milter-greylist: its dump (`greylist import milter-greylist DUMPFILE`) and its
//! configuration (`config import milter-greylist greylist.conf`).

pub mod cli;
pub mod conf;
pub mod conf_map;
pub mod dump;
pub mod entries;
pub mod greylist_import;
pub mod regex;
pub mod rules;
