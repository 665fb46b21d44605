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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::CheckConfig { file } => {
            misdirect::config::Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Train { data, out, name } => misdirect::cli::model::run_train(&data, &out, name),
        Command::Eval {
            data,
            model,
            explain,
        } => misdirect::cli::model::run_eval(&data, model.as_deref(), explain),
    }
}
