//! The decision log: append-only JSON lines, one per decision.
//!
//! * `decisions.jsonl` is the file being written; at `rotate_bytes` it is
//!   renamed to `decisions.NNNNNN.jsonl` (NNNNNN counting up) and a new one
//!   started. [`log_files`] lists them oldest first.
//! * Each line is written with a single `write` of the whole line, so a
//!   killed process leaves whole lines; an fsync follows every
//!   `fsync_every_lines` lines or `fsync_every_ms` after the oldest unsynced
//!   line, whichever comes first, and at rotation and shutdown.
//!   `gcm_log_lines_written_total` counts lines handed to the OS (they survive
//!   a crash of the daemon), `gcm_log_lines_synced_total` lines on disk (they
//!   survive a power cut).
//! * A power cut can still tear the last line. [`DecisionLog::open`] detects a
//!   torn tail (bytes after the last newline, or last lines that are not JSON)
//!   and cuts it before appending, so the log is always a valid prefix.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::LogConfig;
use crate::error::{Error, IoContext, Result};
use crate::pipeline::metrics::Metrics;

pub const ACTIVE: &str = "decisions.jsonl";

/// Per-stage latencies of one decision, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Waiting in the queue for the model.
    pub queue_ms: f64,
    /// Decode, crop, resize, scaling.
    pub preprocess_ms: f64,
    /// Network forward and decision.
    pub infer_ms: f64,
    /// From capture to the decision (the sum of the three, plus hand-overs).
    pub capture_to_decision_ms: f64,
}

/// The result of one divergence check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub ok: bool,
    /// Largest |score difference| over classes (absent when not computable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f64>,
    /// What went wrong, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The divergence checks of one decision (absent: not run on this frame).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// (a) the scores recomputed from the evidence as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Check>,
    /// (b) the scores of the reference path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Check>,
}

impl Checks {
    pub fn divergent(&self) -> bool {
        [&self.evidence, &self.reference]
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| !c.ok))
    }
}

/// One line of the decision log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// Frame id (increasing; gaps are dropped or skipped frames).
    pub frame: u64,
    /// Capture time, microseconds since the Unix epoch.
    pub captured_unix_us: u64,
    /// The source's name for the frame (a replayed file's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The decided class.
    pub class: String,
    pub class_index: usize,
    /// The model's classes, in score order.
    pub classes: Vec<String>,
    /// Class scores (the mean of each CCM).
    pub scores: Vec<f32>,
    pub probabilities: Vec<f32>,
    /// Decided score minus the runner-up's.
    pub margin: f32,
    pub latency: Latency,
    /// The model id: sha256 of its weights.
    pub model: String,
    pub checks: Checks,
    /// True when a check failed.
    pub divergent: bool,
    /// The evidence folder, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<PathBuf>,
}

/// The log files in `dir`, oldest first: `decisions.NNNNNN.jsonl` by number,
/// then `decisions.jsonl`.
pub fn log_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut rotated = Vec::new();
    for e in std::fs::read_dir(dir).at(dir)? {
        let p = e.at(dir)?.path();
        if let Some(n) = rotation_number(&p) {
            rotated.push((n, p));
        }
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let active = dir.join(ACTIVE);
    if active.is_file() {
        files.push(active);
    }
    Ok(files)
}

fn rotation_number(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let n = name.strip_prefix("decisions.")?.strip_suffix(".jsonl")?;
    (n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// What [`DecisionLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovery {
    /// Bytes cut from a torn tail.
    pub cut_bytes: u64,
    /// Lines in the active file after the cut.
    pub lines: u64,
    /// The last logged frame id, in any log file.
    pub last_frame: Option<u64>,
}

/// Finds the valid prefix of a log file's bytes: everything up to the last
/// newline, less trailing lines that are not JSON objects. Returns the
/// prefix's length, its line count and its last frame id.
pub fn valid_prefix(bytes: &[u8]) -> (usize, u64, Option<u64>) {
    let mut end = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    loop {
        if end == 0 {
            return (0, 0, None);
        }
        let start = bytes[..end - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = &bytes[start..end - 1];
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => {
                let lines = bytes[..end].iter().filter(|&&b| b == b'\n').count() as u64;
                return (end, lines, v.get("frame").and_then(|f| f.as_u64()));
            }
            _ => end = start,
        }
    }
}

pub struct DecisionLog {
    dir: PathBuf,
    file: File,
    bytes: u64,
    cfg: LogConfig,
    unsynced: u64,
    oldest_unsynced: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// Opens (creating) `dir/decisions.jsonl` for appending, cutting a torn tail.
    pub fn open(dir: &Path, cfg: &LogConfig, metrics: Arc<Metrics>) -> Result<(Self, Recovery)> {
        std::fs::create_dir_all(dir).at(dir)?;
        let path = dir.join(ACTIVE);
        let mut rec = Recovery::default();
        if path.exists() {
            let bytes = std::fs::read(&path).at(&path)?;
            let (keep, lines, last) = valid_prefix(&bytes);
            if keep < bytes.len() {
                let f = OpenOptions::new().write(true).open(&path).at(&path)?;
                f.set_len(keep as u64).at(&path)?;
                f.sync_all().at(&path)?;
                rec.cut_bytes = (bytes.len() - keep) as u64;
                tracing::warn!(
                    log = %path.display(),
                    "cut a torn tail of {} bytes (a line cut short by a crash or power loss); {lines} whole lines kept",
                    rec.cut_bytes
                );
            }
            rec.lines = lines;
            rec.last_frame = last;
        }
        if rec.last_frame.is_none() {
            // The active file is new or empty: the last frame is in the newest rotated file.
            if let Some(prev) = log_files(dir)?.into_iter().rev().find(|p| *p != path) {
                let bytes = std::fs::read(&prev).at(&prev)?;
                rec.last_frame = valid_prefix(&bytes).2;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        let bytes = file.metadata().at(&path)?.len();
        Ok((
            DecisionLog {
                dir: dir.to_path_buf(),
                file,
                bytes,
                cfg: cfg.clone(),
                unsynced: 0,
                oldest_unsynced: None,
                metrics,
            },
            rec,
        ))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(ACTIVE)
    }

    /// Appends one line (a single write), then syncs or rotates as configured.
    pub fn append(&mut self, line: &LogLine) -> Result<()> {
        let mut text = serde_json::to_string(line)
            .map_err(|e| Error::Runtime(format!("cannot serialise a log line: {e}")))?;
        text.push('\n');
        if self.bytes > 0 && self.bytes + text.len() as u64 > self.cfg.rotate_bytes {
            self.rotate()?;
        }
        let path = self.path();
        self.file.write_all(text.as_bytes()).at(&path)?;
        self.bytes += text.len() as u64;
        self.unsynced += 1;
        self.oldest_unsynced.get_or_insert_with(Instant::now);
        self.metrics.log_lines_written.inc();
        if self.cfg.fsync_every_lines > 0 && self.unsynced >= self.cfg.fsync_every_lines {
            self.sync()?;
        } else {
            self.tick()?;
        }
        Ok(())
    }

    /// Syncs when the oldest unsynced line is older than `fsync_every_ms`
    /// (called between decisions, too).
    pub fn tick(&mut self) -> Result<()> {
        if self.cfg.fsync_every_ms > 0 {
            if let Some(t) = self.oldest_unsynced {
                if t.elapsed().as_millis() as u64 >= self.cfg.fsync_every_ms {
                    self.sync()?;
                }
            }
        }
        Ok(())
    }

    /// Forces written lines to disk.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced == 0 {
            return Ok(());
        }
        self.file.sync_data().at(self.path())?;
        self.metrics.log_lines_synced.add(self.unsynced);
        self.unsynced = 0;
        self.oldest_unsynced = None;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        self.sync()?;
        let next = log_files(&self.dir)?
            .iter()
            .filter_map(|p| rotation_number(p))
            .max()
            .map_or(1, |n| n + 1);
        let to = self.dir.join(format!("decisions.{next:06}.jsonl"));
        let from = self.path();
        std::fs::rename(&from, &to).at(&to)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&from)
            .at(&from)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.bytes = 0;
        self.metrics.log_rotations.inc();
        tracing::info!(log = %to.display(), "decision log rotated");
        Ok(())
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::error!("final fsync of the decision log failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(frame: u64) -> LogLine {
        LogLine {
            frame,
            captured_unix_us: 1,
            source: None,
            class: "ok".into(),
            class_index: 0,
            classes: vec!["ok".into(), "crack".into()],
            scores: vec![0.5, 0.25],
            probabilities: vec![0.56, 0.44],
            margin: 0.25,
            latency: Latency::default(),
            model: "abc".into(),
            checks: Checks::default(),
            divergent: false,
            evidence: None,
        }
    }

    fn cfg(rotate: u64, lines: u64) -> LogConfig {
        LogConfig {
            rotate_bytes: rotate,
            fsync_every_lines: lines,
            fsync_every_ms: 0,
        }
    }

    #[test]
    fn torn_tail_is_cut_and_appends_go_on() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        {
            let (mut log, rec) = DecisionLog::open(d.path(), &cfg(1 << 20, 1), m.clone()).unwrap();
            assert_eq!(rec, Recovery::default());
            for f in 0..3 {
                log.append(&line(f)).unwrap();
            }
        }
        assert_eq!(m.log_lines_synced.get(), 3);
        let p = d.path().join(ACTIVE);
        let mut torn = std::fs::read(&p).unwrap();
        let whole = torn.len();
        torn.extend_from_slice(br#"{"frame":3,"captured_unix"#);
        std::fs::write(&p, &torn).unwrap();
        let (mut log, rec) = DecisionLog::open(d.path(), &cfg(1 << 20, 1), m).unwrap();
        assert_eq!(rec.cut_bytes, (torn.len() - whole) as u64);
        assert_eq!((rec.lines, rec.last_frame), (3, Some(2)));
        log.append(&line(3)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let frames: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<LogLine>(l).unwrap().frame)
            .collect();
        assert_eq!(frames, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_whole_but_garbage_last_line_is_cut_too() {
        let good = serde_json::to_string(&line(7)).unwrap();
        let bytes = format!("{good}\n{good}\n\0\0\0\0\n");
        let (keep, lines, last) = valid_prefix(bytes.as_bytes());
        assert_eq!((keep, lines, last), (2 * good.len() + 2, 2, Some(7)));
        assert_eq!(valid_prefix(b"garbage"), (0, 0, None));
    }

    #[test]
    fn rotation_keeps_every_line_in_order() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let one = serde_json::to_string(&line(0)).unwrap().len() as u64 + 1;
        {
            let (mut log, _) =
                DecisionLog::open(d.path(), &cfg(4096.max(3 * one), 7), m.clone()).unwrap();
            for f in 0..50 {
                log.append(&line(f)).unwrap();
            }
        }
        let files = log_files(d.path()).unwrap();
        assert!(files.len() >= 3, "{files:?}");
        assert!(files[0].ends_with("decisions.000001.jsonl"));
        assert!(files.last().unwrap().ends_with(ACTIVE));
        let mut frames = Vec::new();
        for f in &files {
            for l in std::fs::read_to_string(f).unwrap().lines() {
                frames.push(serde_json::from_str::<LogLine>(l).unwrap().frame);
            }
        }
        assert_eq!(frames, (0..50).collect::<Vec<_>>());
        assert_eq!(m.log_lines_synced.get(), 50);
        assert!(m.log_rotations.get() >= 2);
        // A new start after a rotation finds the last frame in the rotated file.
        std::fs::write(d.path().join(ACTIVE), b"").unwrap();
        let (_, rec) = DecisionLog::open(d.path(), &cfg(1 << 20, 1), m).unwrap();
        assert!(rec.last_frame.is_some());
    }
}
