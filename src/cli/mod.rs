//! Admin subcommands of `misdirectd` (one file per area).

pub mod model;
