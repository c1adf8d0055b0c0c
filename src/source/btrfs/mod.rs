//! The btrfs source (issue 3, in progress): changes between two read-only
//! snapshots, taken from the binary `btrfs send --no-data` stream.
//!
//! Only the stream parser exists so far; the source is not wired into the
//! CLI yet (`--source btrfs` is refused).

pub mod diff;
pub mod stream;
