//! `gcm-inspect synth`: a reproducible synthetic inspection set.

use std::path::PathBuf;

use crate::data::synth;
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder (created; images go to OUT/<class>/).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images in all (classes take turns, so they are balanced).
    #[arg(long, default_value_t = 400, value_parser = super::positive)]
    pub count: usize,
    /// Seed: the same seed gives the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Classes to draw, comma-separated, from ok, crack, inactive, spot.
    #[arg(long, default_value = "ok,crack,inactive,spot")]
    pub classes: String,
}

pub fn run(a: Args) -> Result<()> {
    let kinds =
        synth::parse_kinds(&a.classes).map_err(|m| Error::Usage(format!("--classes: {m}")))?;
    let s = synth::generate(&a.out, a.count, a.seed, a.size, &kinds)?;
    let per: Vec<String> = s
        .classes
        .iter()
        .zip(&s.per_class)
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    println!(
        "wrote {} images of {}x{} to {} ({})",
        s.count,
        s.size_px,
        s.size_px,
        a.out.display(),
        per.join(", ")
    );
    Ok(())
}
