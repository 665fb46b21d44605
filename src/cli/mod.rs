//! Subcommand implementations, one file per area (the argument parsing is in
//! `main.rs`).

pub mod graph;
pub mod hold;
pub mod model;
pub mod postgres;
pub mod serve;
