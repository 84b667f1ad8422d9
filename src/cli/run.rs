//! `gcm-inspect run`: the inspection daemon (see `pipeline`).

use std::path::PathBuf;

use crate::config::Loaded;
use crate::error::{Error, Result};
use crate::pipeline::{self, RunOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Daemon configuration (YAML). Without it the built-in config/default.yaml
    /// is used: the bundled demo model on a synthetic source, outputs under
    /// the state directory.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Stop after N frames have been captured, drain the pipeline and exit 0.
    #[arg(long, value_name = "N")]
    pub max_frames: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    if a.max_frames == Some(0) {
        return Err(Error::Usage("--max-frames must be at least 1".into()));
    }
    let loaded = Loaded::from_arg(a.config.as_deref())?;
    let summary = pipeline::run(
        loaded,
        RunOptions {
            max_frames: a.max_frames,
        },
    )?;
    println!(
        "{}",
        serde_json::to_string(&summary).expect("summary serialises")
    );
    Ok(())
}
