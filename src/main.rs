//! `misdirectd`: the daemon and its admin commands.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "misdirectd",
    version,
    about = "SMTP relay that stops misaddressed outgoing mail"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a configuration file and print every problem in it.
    CheckConfig {
        /// Configuration file.
        file: std::path::PathBuf,
    },
    /// Run the SMTP relay daemon (SIGTERM stops it, SIGHUP reloads --config).
    Serve {
        /// Configuration file (default: built-in defaults).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Learn from mail archives (mbox, maildir, .eml, corpus .jsonl[.gz]).
    Import(misdirect::cli::graph::ImportArgs),
    /// Score archived messages in Date order, one JSON line each.
    Replay(misdirect::cli::graph::ReplayArgs),
    /// Inspect the association graph (stats, show ADDRESS, purge).
    Graph(misdirect::cli::graph::GraphArgs),
    /// Erase every association of an address, in every tenant.
    Forget(misdirect::cli::graph::AddressArgs),
    /// Print everything stored about an address, as JSON.
    Export(misdirect::cli::graph::AddressArgs),
    /// Add a new key to the key file and rewrite the graph store under it.
    RotateKey(misdirect::cli::graph::ConfigArg),
    /// Move the graph and held messages to another store
    /// (`--from embedded --to postgres`).
    Migrate(misdirect::cli::postgres::MigrateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::CheckConfig { file } => {
            misdirect::config::Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Serve { config } => misdirect::cli::serve::run(config),
        Command::Import(a) => misdirect::cli::graph::import(a),
        Command::Replay(a) => misdirect::cli::graph::replay(a),
        Command::Graph(a) => misdirect::cli::graph::graph(a),
        Command::Forget(a) => misdirect::cli::graph::forget(a),
        Command::Export(a) => misdirect::cli::graph::export(a),
        Command::RotateKey(a) => misdirect::cli::graph::rotate_key(a),
        Command::Migrate(a) => misdirect::cli::postgres::migrate(a),
    }
}
