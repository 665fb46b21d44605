//! Subcommand implementations (the argument parsing is in `main.rs`).

pub mod graph;
pub mod postgres;
pub mod serve;
