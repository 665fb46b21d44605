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
    }
}
