//! `gcm-inspect review --log LOG_DIR`: the review page over a decision log
//! (see `review`), served until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::review::{start, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The decision log folder (holding decisions.jsonl); read only.
    #[arg(long = "log", value_name = "LOG_DIR")]
    pub log_dir: PathBuf,
    /// Look for evidence folders here instead of where the log lines say
    /// (for a copy of the log and evidence moved elsewhere).
    #[arg(long = "evidence", value_name = "DIR")]
    pub evidence_dir: Option<PathBuf>,
    /// Address to serve on. Any address but a loopback one needs --token-file.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
    pub bind: String,
    /// Folder of labels.jsonl, the reviewers' labels (default: the log folder).
    #[arg(long = "labels", value_name = "DIR")]
    pub labels_dir: Option<PathBuf>,
    /// The reviewer's name in labels.jsonl (default: $USER; with a token,
    /// the token's name).
    #[arg(long, value_name = "NAME")]
    pub reviewer: Option<String>,
    /// Access tokens, one `NAME:TOKEN` line per reviewer (at least 16
    /// characters a token); required on a non-loopback --bind.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Signals first, so that a stop during the log's first read is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::Runtime(format!("cannot install signal handlers: {e}")))?;
    let review = start(Options {
        log_dir: a.log_dir,
        evidence_dir: a.evidence_dir,
        bind: a.bind,
        labels_dir: a.labels_dir,
        reviewer: a.reviewer,
        token_file: a.token_file,
    })?;
    let token = if review.tokens {
        "?token=YOUR_TOKEN"
    } else {
        ""
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "review page: http://{}/{token}", review.addr());
    let _ = writeln!(out, "labels: {}", review.labels.display());
    let _ = out.flush();
    tracing::info!(addr = %review.addr(), "review: listening on http://{}/", review.addr());
    let sig = signals.forever().next();
    tracing::info!(signal = ?sig, "review: stopping");
    drop(review);
    Ok(())
}
