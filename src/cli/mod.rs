//! The command line: one file per subcommand.

use clap::{Parser, Subcommand};

use crate::error::Result;

pub mod bench;
pub mod check_config;
pub mod dist;
pub mod eval;
pub mod explain;
pub mod export;
pub mod logging;
pub mod paint;
pub mod review;
pub mod run;
pub mod sweep;
pub mod synth;
pub mod train;
pub mod verify;

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
    /// Run the inspection daemon: classify every frame, log each decision with its evidence.
    Run(run::Args),
    /// Validate a daemon config: schema, model, device and source, without running.
    CheckConfig(check_config::Args),
    /// Re-check a decision log: recompute every kept evidence's scores (exit 1 if any diverge).
    Verify(verify::Args),
    /// Decisions and their evidence (CWM heatmap, CCM parts) for image files.
    Explain(explain::Args),
    /// Accuracy, per-class precision/recall, confusion and decline ratios on labelled images;
    /// --sweep: the review threshold to configure for a miss-rate limit.
    Eval(eval::Args),
    /// Train a GCM on image folders or a CSV manifest.
    Train(train::Args),
    /// Reviewed frames (labels.jsonl) as a training manifest with copies of their frame.png.
    Export(export::Args),
    /// Measure how fast this machine runs a model: images/s and latency percentiles.
    Bench(bench::Args),
    /// The review page: browse decisions and their evidence, relabel them (labels.jsonl).
    Review(review::Args),
    /// Paint thin cracks on a manifest's clean training cells: a pretraining set for `train --init`.
    PaintCracks(paint::Args),
    /// Print a shell completion script (packaging; see scripts/build-deb.sh).
    #[command(hide = true)]
    Completions(dist::CompletionsArgs),
    /// Write the manual pages (packaging; see scripts/build-deb.sh).
    #[command(hide = true)]
    Man(dist::ManArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) => synth::run(a),
        Command::Run(a) => run::run(a),
        Command::CheckConfig(a) => check_config::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Train(a) => train::run(a),
        Command::Export(a) => export::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::PaintCracks(a) => paint::run(a),
        Command::Review(a) => review::run(a),
        Command::Completions(a) => dist::completions(a),
        Command::Man(a) => dist::man(a),
    }
}

/// A count that must be at least 1 (`--batch-size 0` is a usage error, not
/// an empty run or a division by zero later).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A share in [0, 1).
pub fn fraction(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} must be in [0, 1)")),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number of seconds, at least 0.
pub fn seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not a number of seconds >= 0")),
        Err(e) => Err(e.to_string()),
    }
}
