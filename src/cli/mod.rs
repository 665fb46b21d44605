//! Subcommand implementations (the argument parsing is in `main.rs`).

pub mod serve;
pub mod graph;
