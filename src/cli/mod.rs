//! The command line: one file per subcommand.

use clap::{Parser, Subcommand};

use crate::error::Result;

pub mod bench;
pub mod synth;

#[derive(Debug, Parser)]
#[command(
    name = "gcm-inspect",
    version,
    about = "Quality inspection with Generative Contribution Mappings: every decision comes with the evidence that produced it"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic inspection set (EL images of solar cells) as DIR/<class>/*.png.
    Synth(synth::Args),
    /// Measure how fast this machine runs a model: images/s and latency percentiles.
    Bench(bench::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) => synth::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// Logs to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
