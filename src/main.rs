//! The `collabd` binary: parse flags, load settings, start logging, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use collabd::config::{Overrides, Settings};

/// A real-time collaborative state server for Yjs clients.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (default: ./collabd.toml if present).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::load(cli.config.as_deref(), &cli.overrides) {
        Ok(settings) => settings,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match actix_rt::System::new().block_on(collabd::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
