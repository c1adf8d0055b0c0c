//! Orchestration: the flows that tie sources, the seal core, backends and
//! the catalog together. Each flow is one file.

pub mod backup;
pub mod chain;
pub mod forget;
pub mod prior;
pub mod prune;
pub mod rebuild;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod upload;
pub mod verify;
