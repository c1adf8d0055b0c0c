//! n2s-agent: back up ZFS and btrfs snapshots (or any directory) to an
//! encrypted, deduplicated repository, at a cost that follows what changed.
//!
//! The library is the seal-and-upload core plus the pieces around it;
//! ARCHITECTURE.md has the map.

pub mod backend;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod core;
pub mod engine;
pub mod fsx;
pub mod model;
pub mod progress;
pub mod repo;
pub mod source;
pub mod state;
pub mod util;
