//! `gcm-inspect verify LOG_DIR`: the auditor's re-check of a decision log
//! (see `audit`); exits 1 when any evidence diverges.

use std::path::PathBuf;

use crate::audit::verify;
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The decision log folder (holding decisions.jsonl).
    #[arg(value_name = "LOG_DIR")]
    pub log_dir: PathBuf,
    /// Look for evidence folders here instead of where the log lines say
    /// (for a copy of the log and evidence moved elsewhere).
    #[arg(long, value_name = "DIR")]
    pub evidence_dir: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let r = verify(&a.log_dir, a.evidence_dir.as_deref())?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("report serialises")
        );
    } else {
        for f in &r.foreign {
            println!("FOREIGN {f}; skipped");
        }
        for d in &r.divergent {
            println!(
                "DIVERGENT frame {} ({}): {}: {}",
                d.frame,
                d.at,
                d.evidence.display(),
                d.why
            );
        }
        println!(
            "{} decisions in {} log file(s){}; {} with evidence: {} reproduced, {} divergent, {} deleted by the quota; {} logged as divergent by the daemon{}",
            r.decisions,
            r.log_files,
            if r.foreign.is_empty() {
                String::new()
            } else {
                format!(", {} other lines skipped", r.foreign.len())
            },
            r.with_evidence,
            r.reproduced,
            r.divergent.len(),
            r.evidence_removed,
            r.logged_divergent,
            if r.torn_tail { "; last line incomplete (ignored)" } else { "" }
        );
    }
    if r.divergent.is_empty() {
        Ok(())
    } else {
        Err(Error::Divergent(format!(
            "{} of {} evidence folders do not reproduce their logged decisions",
            r.divergent.len(),
            r.with_evidence
        )))
    }
}
