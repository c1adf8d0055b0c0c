//! The seal core: pure transformations of bytes and records. It knows
//! nothing of where bytes come from (sources) or where they go (backends),
//! nor of SQLite, so any client can use it.

pub mod chunker;
pub mod compress;
pub mod keyobject;
pub mod keys;
pub mod manifest;
pub mod pack;
pub mod packsummary;
pub mod pruneplan;
pub mod seal;
