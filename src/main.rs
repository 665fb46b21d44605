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
    /// Held messages: list, show, release, discard, expire (on the spool
    /// directory from the configuration).
    Hold {
        /// Configuration file.
        #[arg(short, long, default_value = misdirect::cli::hold::DEFAULT_CONFIG)]
        config: std::path::PathBuf,
        #[command(subcommand)]
        cmd: misdirect::cli::hold::HoldCmd,
    },
    /// Print the verdict, score and reasons for one message.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = misdirect::cli::hold::DEFAULT_CONFIG)]
        config: std::path::PathBuf,
        /// Earlier mail (files or directories of .eml) to learn the graph from.
        #[arg(long)]
        history: Vec<std::path::PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
        /// The message.
        file: std::path::PathBuf,
    },
    /// Train the misdirection model on a header corpus (see models/README.md).
    Train {
        #[command(flatten)]
        data: misdirect::cli::model::DataArgs,
        /// Model file to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Model name (reported in score headers).
        #[arg(long)]
        name: Option<String>,
    },
    /// Evaluate the model and the baselines on held-back owners and time.
    Eval {
        #[command(flatten)]
        data: misdirect::cli::model::DataArgs,
        /// Evaluate this model file instead of fitting one on the training split.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Print this many highest-scored legitimate and lowest-scored
        /// misdirected test messages with their reasons.
        #[arg(long, default_value_t = 0)]
        explain: usize,
    },
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
        Command::Hold { config, cmd } => {
            misdirect::cli::hold::run_hold(&config, cmd, &mut std::io::stdout())
        }
        Command::Check {
            config,
            history,
            json,
            file,
        } => {
            misdirect::cli::hold::run_check(&config, &file, &history, json, &mut std::io::stdout())
        }
        Command::Train { data, out, name } => misdirect::cli::model::run_train(&data, &out, name),
        Command::Eval {
            data,
            model,
            explain,
        } => misdirect::cli::model::run_eval(&data, model.as_deref(), explain),
        Command::Migrate(a) => misdirect::cli::postgres::migrate(a),
    }
}
