//! Subcommand implementations (the argument parsing is in `main.rs`).

pub mod graph;
