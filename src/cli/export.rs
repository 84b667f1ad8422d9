//! `gcm-inspect export`: reviewed frames as a training manifest (see
//! [`crate::export`]).

use std::path::PathBuf;

use crate::error::Result;
use crate::export::{export, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The decision log folder the labels refer to.
    #[arg(long, value_name = "LOG_DIR")]
    pub log: PathBuf,
    /// The folder holding labels.jsonl (default: the log folder, where
    /// `review` writes it by default).
    #[arg(long, value_name = "DIR")]
    pub labels: Option<PathBuf>,
    /// Look for evidence folders here instead of where the log lines say.
    #[arg(long, value_name = "DIR")]
    pub evidence_dir: Option<PathBuf>,
    /// Output folder: export.csv and images/<label>/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Only frames whose label corrects the decision (default: confirmed
    /// frames too).
    #[arg(long)]
    pub only_corrected: bool,
    /// Share of each label marked `val` in the manifest.
    #[arg(long, default_value_t = 0.2, value_parser = super::fraction)]
    pub val_fraction: f64,
    /// Seed of the validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let labels = a.labels.unwrap_or_else(|| a.log.clone());
    let s = export(&Options {
        log: a.log,
        labels,
        evidence: a.evidence_dir,
        out: a.out,
        only_corrected: a.only_corrected,
        val_fraction: a.val_fraction,
        seed: a.seed,
    })?;
    let total: usize = s.per_label.values().flat_map(|m| m.values()).sum();
    println!(
        "exported {total} frames ({} corrected, {} confirmed) to {}",
        s.corrected,
        s.confirmed,
        s.manifest.display()
    );
    for (label, splits) in &s.per_label {
        let parts: Vec<String> = splits.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  {label}: {}", parts.join(", "));
    }
    if s.from_input_png > 0 {
        println!(
            "  {} frame(s) from input.png: their evidence predates frame.png (model input size only)",
            s.from_input_png
        );
    }
    if !s.without_evidence.is_empty() {
        println!(
            "  {} labelled frame(s) left out: their evidence is gone (frames {:?})",
            s.without_evidence.len(),
            s.without_evidence
        );
    }
    Ok(())
}
