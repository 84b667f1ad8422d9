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
//!   Whole JSON lines that are not decisions (added by another tool) are kept;
//!   frame ids continue after the highest decision in any log file.
//! * A write that fails (a full disk, an I/O error) never stops inspection
//!   and never leaves a partial line: the file is cut back to its last whole
//!   line, the line waits in memory (up to [`BACKLOG_LINES`], oldest kept)
//!   and is written again after a backoff (100 ms doubling to 5 s); the
//!   daemon reports itself degraded (`/healthz` 503 with the reason) until
//!   the backlog is written. Decisions beyond the backlog, or still waiting
//!   when the daemon stops, are counted (`gcm_decisions_unlogged_total`, the
//!   summary's `decisions_unlogged`) and named in the daemon's own log.
//! * Every line names its format in `schema` ([`LOG_SCHEMA`]; lines written
//!   before it have none and are read as 1.0). [`LogLine::parse`] takes any
//!   minor version of its major one, ignoring fields it does not know, and
//!   refuses another major version ([`LineError::NewerMajor`]); the JSON
//!   Schema of a line is `docs/schema/decision-log-line.schema.json`
//!   (see [`crate::schema`]).
//! * Rotated files are deleted, oldest first, by the retention limits
//!   (`keep_bytes`, `keep_days`; see [`super::retention`]) at open, at each
//!   rotation and once a minute; the active file never is.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::LogConfig;
use crate::error::{Error, IoContext, Result};
use crate::pipeline::infer::Latency;
use crate::pipeline::metrics::Metrics;
use crate::verdict::Verdict;

use super::retention::Retention;

pub const ACTIVE: &str = "decisions.jsonl";

/// The schema of the lines this build writes: name and `major.minor`. A
/// minor version only adds optional fields; a major version changes what
/// existing fields mean.
pub const LOG_SCHEMA: &str = "gcm-inspect/log/1.0";
const LOG_SCHEMA_NAME: &str = "gcm-inspect/log/";
const LOG_MAJOR: u64 = 1;

/// Why a log line is not read as a decision.
#[derive(Clone, Debug, PartialEq)]
pub enum LineError {
    /// A decision line of another major version than this build reads.
    NewerMajor(String),
    /// Not a decision line (another tool's line, garbage): what is wrong.
    NotDecision(String),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::NewerMajor(m) | LineError::NotDecision(m) => f.write_str(m),
        }
    }
}

/// Checks a line's `schema` value against the major version this build reads.
fn check_schema(schema: &str) -> std::result::Result<(), LineError> {
    let not_ours = || {
        LineError::NotDecision(format!(
            "schema {schema:?} is not {LOG_SCHEMA_NAME}MAJOR.MINOR"
        ))
    };
    let version = schema.strip_prefix(LOG_SCHEMA_NAME).ok_or_else(not_ours)?;
    let (major, minor) = version.split_once('.').ok_or_else(not_ours)?;
    let major: u64 = major.parse().map_err(|_| not_ours())?;
    minor.parse::<u64>().map_err(|_| not_ours())?;
    if major != LOG_MAJOR {
        return Err(LineError::NewerMajor(format!(
            "decision log line of schema {schema}: this gcm-inspect ({}) reads major version {LOG_MAJOR} only ({LOG_SCHEMA} and later 1.x); read this log with a gcm-inspect that knows version {major}",
            env!("CARGO_PKG_VERSION")
        )));
    }
    Ok(())
}

/// Decision lines kept in memory while the log cannot be written (about
/// 6 MB at 600 bytes a line; five minutes at 30 fps).
pub const BACKLOG_LINES: usize = 10_000;

/// The first wait before writing again after a failure; doubled up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The result of one divergence check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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

/// One line of the decision log. (A type of its own, though it repeats
/// fields of `infer::Decided`: it is the log's file format, which must not
/// change when the pipeline's types do.) Fields it does not know (from a
/// newer minor version) are ignored; see [`LogLine::parse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// [`LOG_SCHEMA`]: `gcm-inspect/log/MAJOR.MINOR` (absent in lines
    /// written before versions, which are 1.0; see [`LogLine::schema`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
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
    /// What the line does with the part: `ok`, `ng` or `review` (absent in
    /// logs written before verdicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why that verdict, e.g. `class crack p=0.97` or `frame saturated: 100%
    /// of pixels at 255`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub latency: Latency,
    /// The model id: sha256 of its weights.
    pub model: String,
    pub checks: Checks,
    /// True when a check failed.
    pub divergent: bool,
    /// The evidence folder, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<PathBuf>,
    /// Why evidence that was to be kept was not (the disk refused it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_error: Option<String>,
}

impl LogLine {
    /// The line's schema, [`LOG_SCHEMA`] for lines written before versions.
    pub fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or(LOG_SCHEMA)
    }

    /// What the daemon always writes and the readers index by: one score
    /// and one probability per class, and the decided class among them. A
    /// line that breaks this (edited, or written by something else) is not
    /// a decision.
    fn check_shape(&self) -> std::result::Result<(), String> {
        let n = self.classes.len();
        if n == 0 {
            return Err("no classes".into());
        }
        if self.scores.len() != n || self.probabilities.len() != n {
            return Err(format!(
                "{n} classes but {} scores and {} probabilities",
                self.scores.len(),
                self.probabilities.len()
            ));
        }
        if self.class_index >= n {
            return Err(format!("class_index {} of {n} classes", self.class_index));
        }
        Ok(())
    }

    /// Reads one line (without its newline) as a decision of a version this
    /// build reads (see the module docs).
    pub fn parse(text: &str) -> std::result::Result<LogLine, LineError> {
        /// Only the version, from a line that is not a decision of ours.
        #[derive(Deserialize)]
        struct Versioned {
            schema: Option<String>,
        }
        match serde_json::from_str::<LogLine>(text) {
            Ok(l) => {
                check_schema(l.schema())?;
                l.check_shape().map_err(LineError::NotDecision)?;
                Ok(l)
            }
            Err(e) => {
                if let Ok(Versioned { schema: Some(s) }) = serde_json::from_str(text) {
                    check_schema(&s)?;
                }
                Err(LineError::NotDecision(e.to_string()))
            }
        }
    }
}

/// A line as the daemon writes it, for tests and the schema's check.
#[cfg(test)]
pub(crate) fn example_line() -> LogLine {
    LogLine {
        schema: Some(LOG_SCHEMA.into()),
        frame: 7,
        captured_unix_us: 1,
        source: Some("a.png".into()),
        class: "ok".into(),
        class_index: 0,
        classes: vec!["ok".into(), "crack".into()],
        scores: vec![0.5, 0.25],
        probabilities: vec![0.56, 0.44],
        margin: 0.25,
        verdict: Some(Verdict::Ok),
        reason: Some("class ok p=0.56".into()),
        latency: Latency::default(),
        model: "abc".into(),
        checks: Checks {
            evidence: Some(Check {
                ok: true,
                max_abs_error: Some(0.0),
                detail: None,
            }),
            reference: None,
        },
        divergent: false,
        evidence: Some(PathBuf::from("/var/lib/gcm-inspect/evidence/f000000000007")),
        evidence_error: Some("disk full".into()),
    }
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

pub(super) fn rotation_number(p: &Path) -> Option<u64> {
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
    /// The highest frame id of a decision line, over all log files.
    pub last_frame: Option<u64>,
}

/// The frame id of a decision line; `None` for anything else (a line of
/// another tool, garbage).
fn decision_frame(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    LogLine::parse(text).ok().map(|l| l.frame)
}

/// Finds the valid prefix of a log file's bytes: everything up to the last
/// newline, less trailing lines that are not JSON objects (torn or garbage;
/// whole JSON lines of other tools stay). Returns the prefix's length and its
/// line count.
pub fn valid_prefix(bytes: &[u8]) -> (usize, u64) {
    let mut end = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    while end > 0 {
        let start = bytes[..end - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        match serde_json::from_slice::<serde_json::Value>(&bytes[start..end - 1]) {
            Ok(v) if v.is_object() => break,
            _ => end = start,
        }
    }
    let lines = bytes[..end].iter().filter(|&&b| b == b'\n').count() as u64;
    (end, lines)
}

/// Cuts a torn tail off the JSON-lines file `path` (see [`valid_prefix`]),
/// fsyncing the cut; returns the bytes cut and the whole lines kept. The
/// decision log and the review page's `labels.jsonl` both open this way.
pub fn cut_torn_tail(path: &Path) -> Result<(u64, u64)> {
    let bytes = std::fs::read(path).at(path)?;
    let (keep, lines) = valid_prefix(&bytes);
    let cut = (bytes.len() - keep) as u64;
    if cut > 0 {
        let f = OpenOptions::new().write(true).open(path).at(path)?;
        f.set_len(keep as u64).at(path)?;
        f.sync_all().at(path)?;
        tracing::warn!(
            file = %path.display(),
            "cut a torn tail of {cut} bytes (a line cut short by a crash or power loss); {lines} whole lines kept"
        );
    }
    Ok((cut, lines))
}

/// The frame id of the last decision line of `path`, read backwards from
/// the end in blocks (a rotated file is large; its last decision is near
/// its end).
pub fn last_decision_frame(path: &Path) -> Result<Option<u64>> {
    const BLOCK: u64 = 256 << 10;
    let mut f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    // `tail` holds the bytes from `pos` to the end of the last whole line
    // not yet searched.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    while pos > 0 {
        let from = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; (pos - from) as usize];
        f.seek(SeekFrom::Start(from)).at(path)?;
        f.read_exact(&mut block).at(path)?;
        block.extend_from_slice(&tail);
        pos = from;
        // Whole lines of this block, newest first; the part before the
        // first newline may continue in the previous block.
        let first_nl = if from == 0 {
            None
        } else {
            block.iter().position(|&b| b == b'\n')
        };
        let searched = first_nl.map_or(0, |i| i + 1);
        for line in block[searched..].split(|&b| b == b'\n').rev() {
            if let Some(frame) = decision_frame(line) {
                return Ok(Some(frame));
            }
        }
        block.truncate(searched);
        tail = block;
    }
    Ok(None)
}

/// The log's state while writes fail.
#[derive(Debug)]
struct Failing {
    since: Instant,
    /// When to try again.
    retry_at: Instant,
    /// The current wait between attempts.
    backoff: Duration,
    /// The last error, for `/healthz` and the daemon's log.
    error: String,
    failures: u64,
}

pub struct DecisionLog {
    dir: PathBuf,
    /// The active file; `None` between a rotation's rename and a successful
    /// open of the new file.
    file: Option<File>,
    /// Length of the active file up to its last whole line.
    bytes: u64,
    /// The active file may end in a partial line (a failed write whose cut
    /// back failed too): cut it before the next write.
    torn: bool,
    cfg: LogConfig,
    unsynced: u64,
    oldest_unsynced: Option<Instant>,
    /// Lines not yet written, oldest first.
    backlog: VecDeque<String>,
    failing: Option<Failing>,
    /// Lines dropped because the backlog was full (reported when writes work again).
    dropped_since_failure: u64,
    retention: Retention,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// Opens (creating) `dir/decisions.jsonl` for appending, cutting a torn tail.
    pub fn open(dir: &Path, cfg: &LogConfig, metrics: Arc<Metrics>) -> Result<(Self, Recovery)> {
        std::fs::create_dir_all(dir).at(dir)?;
        let path = dir.join(ACTIVE);
        let mut rec = Recovery::default();
        if path.exists() {
            (rec.cut_bytes, rec.lines) = cut_torn_tail(&path)?;
        }
        for f in log_files(dir)? {
            if let Some(frame) = last_decision_frame(&f)? {
                rec.last_frame = rec.last_frame.max(Some(frame));
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        let bytes = file.metadata().at(&path)?.len();
        let mut retention = Retention::new(dir, cfg);
        metrics.log_keep_bytes.set(retention.keep_bytes());
        retention.pass(dir, &metrics);
        Ok((
            DecisionLog {
                dir: dir.to_path_buf(),
                file: Some(file),
                bytes,
                torn: false,
                cfg: cfg.clone(),
                unsynced: 0,
                oldest_unsynced: None,
                backlog: VecDeque::new(),
                failing: None,
                dropped_since_failure: 0,
                retention,
                metrics,
            },
            rec,
        ))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(ACTIVE)
    }

    /// Lines waiting to be written.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Queues one line and writes what is waiting (unless a failed write's
    /// backoff has not yet passed), then syncs or rotates as configured.
    /// Write trouble is handled here (see the module docs); only a line that
    /// cannot be serialised is an error.
    pub fn append(&mut self, line: &LogLine) -> Result<()> {
        let mut text = serde_json::to_string(line)
            .map_err(|e| Error::Runtime(format!("cannot serialise a log line: {e}")))?;
        text.push('\n');
        if self.backlog.len() >= BACKLOG_LINES {
            self.metrics.decisions_unlogged.inc();
            self.dropped_since_failure += 1;
            if self.dropped_since_failure == 1 {
                tracing::error!(
                    frame = line.frame,
                    "decision log backlog full ({BACKLOG_LINES} lines): decisions from frame {} on are not logged until the log can be written",
                    line.frame
                );
            }
        } else {
            self.backlog.push_back(text);
        }
        self.metrics
            .log_backlog_lines
            .set(self.backlog.len() as u64);
        self.tick();
        Ok(())
    }

    /// Writes waiting lines when due, and syncs when the oldest unsynced
    /// line is older than `fsync_every_ms` (called between decisions, too).
    pub fn tick(&mut self) {
        if self
            .failing
            .as_ref()
            .is_none_or(|f| Instant::now() >= f.retry_at)
        {
            self.write_backlog();
        }
        if self.cfg.fsync_every_ms > 0 {
            if let Some(t) = self.oldest_unsynced {
                if t.elapsed().as_millis() as u64 >= self.cfg.fsync_every_ms {
                    self.sync();
                }
            }
        }
        self.retention.maybe_pass(&self.dir, &self.metrics);
    }

    fn write_backlog(&mut self) {
        while let Some(text) = self.backlog.front() {
            let len = text.len() as u64;
            let r = self.write_line(len);
            match r {
                Ok(()) => {
                    self.backlog.pop_front();
                    self.metrics
                        .log_backlog_lines
                        .set(self.backlog.len() as u64);
                    self.recovered();
                    if self.cfg.fsync_every_lines > 0 && self.unsynced >= self.cfg.fsync_every_lines
                    {
                        self.sync();
                    }
                }
                Err(e) => {
                    self.failed(e);
                    return;
                }
            }
        }
    }

    /// Writes the backlog's first line (`len` bytes) as one `write`,
    /// rotating first if it would not fit; on failure cuts the file back to
    /// its last whole line.
    fn write_line(&mut self, len: u64) -> std::io::Result<()> {
        if self.bytes > 0 && self.bytes + len > self.cfg.rotate_bytes {
            self.rotate()?;
        }
        self.open_active()?;
        let file = self.file.as_mut().expect("opened above");
        if self.torn {
            file.set_len(self.bytes)?;
            self.torn = false;
        }
        let text = self.backlog.front().expect("a line waits").as_bytes();
        if let Err(e) = file.write_all(text) {
            // Never leave a partial line: cut back to the last whole one
            // (or, if that fails too, before the next write).
            if file.set_len(self.bytes).is_err() {
                self.torn = true;
            }
            return Err(e);
        }
        self.bytes += len;
        self.unsynced += 1;
        self.oldest_unsynced.get_or_insert_with(Instant::now);
        self.metrics.log_lines_written.inc();
        Ok(())
    }

    /// Opens (creates) the active file if a rotation left none.
    fn open_active(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path())?;
            self.bytes = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(())
    }

    fn failed(&mut self, e: std::io::Error) {
        self.metrics.log_write_failures.inc();
        let now = Instant::now();
        let error = format!("{}: {e}", self.path().display());
        match &mut self.failing {
            Some(f) => {
                f.backoff = (f.backoff * 2).min(RETRY_MAX);
                f.retry_at = now + f.backoff;
                f.error = error;
                f.failures += 1;
            }
            None => {
                tracing::error!(
                    "decision log cannot be written ({error}); inspection goes on, up to {BACKLOG_LINES} lines wait in memory and are written when it works again"
                );
                self.failing = Some(Failing {
                    since: now,
                    retry_at: now + RETRY_FIRST,
                    backoff: RETRY_FIRST,
                    error,
                    failures: 1,
                });
            }
        }
        let f = self.failing.as_ref().expect("set above");
        self.metrics.set_degraded(Some(format!(
            "decision log cannot be written for {:.0} s: {}; {} lines waiting, {} decisions not logged",
            now.duration_since(f.since).as_secs_f64(),
            f.error,
            self.backlog.len(),
            self.dropped_since_failure
        )));
    }

    fn recovered(&mut self) {
        if self.backlog.is_empty() {
            if let Some(f) = self.failing.take() {
                tracing::warn!(
                    "decision log writable again after {:.1} s ({} failed attempts); every waiting line written, {} decisions not logged",
                    f.since.elapsed().as_secs_f64(),
                    f.failures,
                    self.dropped_since_failure
                );
                self.dropped_since_failure = 0;
                self.metrics.set_degraded(None);
            }
        }
    }

    /// Forces written lines to disk. A failed fsync is counted and logged
    /// and tried again later; the lines stay counted as written, not synced.
    pub fn sync(&mut self) {
        if self.unsynced == 0 {
            return;
        }
        let Some(file) = &self.file else { return };
        if let Err(e) = file.sync_data() {
            self.metrics.log_write_failures.inc();
            tracing::error!("fsync of {} failed: {e}", self.path().display());
            return;
        }
        self.metrics.log_lines_synced.add(self.unsynced);
        self.unsynced = 0;
        self.oldest_unsynced = None;
    }

    /// At shutdown: a last attempt at the backlog (for up to `patience`),
    /// then a final fsync. Returns the lines that could not be written
    /// (counted as unlogged, and named in the daemon's log).
    pub fn finish(&mut self, patience: Duration) -> u64 {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(f) = &mut self.failing {
                f.retry_at = Instant::now();
            }
            self.write_backlog();
            if self.backlog.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.sync();
        let lost = self.backlog.len() as u64;
        if lost > 0 {
            self.metrics.decisions_unlogged.add(lost);
            tracing::error!(
                "{lost} decisions could not be written to the decision log before the stop (frames {}); {}",
                self.backlog_frames(),
                self.failing.as_ref().map_or(String::new(), |f| f.error.clone())
            );
            self.backlog.clear();
            self.metrics.log_backlog_lines.set(0);
        }
        lost
    }

    /// The frame ids of the backlog, as `first..=last`.
    fn backlog_frames(&self) -> String {
        let frame = |t: Option<&String>| t.and_then(|t| decision_frame(t.trim_end().as_bytes()));
        match (frame(self.backlog.front()), frame(self.backlog.back())) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => "unknown".into(),
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync();
        if self.file.is_some() {
            let next = log_files(&self.dir)
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .iter()
                .filter_map(|p| rotation_number(p))
                .max()
                .map_or(1, |n| n + 1);
            let to = self.dir.join(format!("decisions.{next:06}.jsonl"));
            std::fs::rename(self.path(), &to)?;
            self.file = None;
            self.metrics.log_rotations.inc();
            tracing::info!(log = %to.display(), "decision log rotated");
        }
        self.open_active()?;
        self.retention.pass(&self.dir, &self.metrics);
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example line as frame `frame`, without source, checks or evidence.
    fn line(frame: u64) -> LogLine {
        LogLine {
            frame,
            source: None,
            checks: Checks::default(),
            evidence: None,
            evidence_error: None,
            ..example_line()
        }
    }

    /// A log's text: the decision line of each frame.
    fn jsonl(frames: impl IntoIterator<Item = u64>) -> String {
        frames
            .into_iter()
            .map(|f| serde_json::to_string(&line(f)).unwrap() + "\n")
            .collect()
    }

    fn cfg(rotate: u64, lines: u64) -> LogConfig {
        LogConfig {
            rotate_bytes: rotate,
            fsync_every_lines: lines,
            fsync_every_ms: 0,
            keep_bytes: Some(0),
            keep_days: 0,
        }
    }

    /// The bytes of the log's files in `dir`.
    fn log_size(dir: &Path) -> u64 {
        log_files(dir)
            .unwrap()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }

    fn frames_in(dir: &Path) -> Vec<u64> {
        let mut frames = Vec::new();
        for f in log_files(dir).unwrap() {
            for l in std::fs::read_to_string(f).unwrap().lines() {
                frames.push(serde_json::from_str::<LogLine>(l).unwrap().frame);
            }
        }
        frames
    }

    #[test]
    fn retention_keeps_the_log_under_keep_bytes_by_deleting_the_oldest_rotated_files() {
        let d = tempfile::tempdir().unwrap();
        let others = [
            ("labels.jsonl", "{\"frame\":3,\"label\":\"crack\"}\n"),
            ("notes.txt", "x"),
        ];
        for (name, text) in others {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        let m = Arc::new(Metrics::new());
        let keep = 3 * 4096;
        let c = LogConfig {
            keep_bytes: Some(keep),
            ..cfg(4096, 1)
        };
        let (mut log, _) = DecisionLog::open(d.path(), &c, m.clone()).unwrap();
        assert_eq!(m.log_keep_bytes.get(), keep);
        let (mut peak, mut written) = (0, 0);
        for f in 0..300 {
            log.append(&line(f)).unwrap();
            written += serde_json::to_string(&line(f)).unwrap().len() as u64 + 1;
            peak = peak.max(log_size(d.path()));
        }
        drop(log);
        assert!(peak <= keep, "the log reached {peak} bytes, bound {keep}");
        let files = log_files(d.path()).unwrap();
        assert!(files.last().unwrap().ends_with(ACTIVE));
        // What is left is the newest lines, none missing after the first.
        let frames = frames_in(d.path());
        let first = frames[0];
        assert!(first > 0);
        assert_eq!(frames, (first..300).collect::<Vec<_>>());
        let rotated_left = files.len() as u64 - 1;
        assert_eq!(
            m.log_files_deleted.get(),
            m.log_rotations.get() - rotated_left
        );
        assert_eq!(m.log_bytes_deleted.get(), written - log_size(d.path()));
        for (name, text) in others {
            assert_eq!(std::fs::read_to_string(d.path().join(name)).unwrap(), text);
        }
    }

    #[test]
    fn retention_by_age_deletes_old_rotated_files_never_the_active_one() {
        let d = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let day = Duration::from_secs(86_400);
        for (name, frames, age) in [
            ("decisions.000001.jsonl", 0..3, 3 * day),
            ("decisions.000002.jsonl", 3..6, 3 * day),
            ("decisions.000003.jsonl", 6..9, Duration::from_secs(3600)),
            (ACTIVE, 9..10, 10 * day),
        ] {
            let p = d.path().join(name);
            std::fs::write(&p, jsonl(frames)).unwrap();
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_modified(now - age).unwrap();
        }
        let m = Arc::new(Metrics::new());
        let c = LogConfig {
            keep_days: 2,
            ..cfg(1 << 20, 1)
        };
        let (mut log, rec) = DecisionLog::open(d.path(), &c, m.clone()).unwrap();
        assert_eq!(rec.last_frame, Some(9));
        assert_eq!(m.log_files_deleted.get(), 2);
        assert_eq!(frames_in(d.path()), (6..10).collect::<Vec<_>>());
        log.append(&line(10)).unwrap();
        assert_eq!(frames_in(d.path()), (6..11).collect::<Vec<_>>());
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
    fn a_newer_minor_version_is_read_and_a_newer_major_refused() {
        let mut v = serde_json::to_value(line(5)).unwrap();
        v["schema"] = "gcm-inspect/log/1.7".into();
        v["added_in_1_7"] = serde_json::json!({"x": 1});
        let l = LogLine::parse(&v.to_string()).unwrap();
        assert_eq!((l.frame, l.schema()), (5, "gcm-inspect/log/1.7"));

        // Lines from before versions have no schema field: 1.0.
        let mut old = serde_json::to_value(line(6)).unwrap();
        old.as_object_mut().unwrap().remove("schema");
        assert_eq!(
            LogLine::parse(&old.to_string()).unwrap().schema(),
            LOG_SCHEMA
        );

        // A new major: refused whether or not its fields still parse.
        v["schema"] = "gcm-inspect/log/2.0".into();
        let e = LogLine::parse(&v.to_string()).unwrap_err();
        let reshaped = r#"{"schema":"gcm-inspect/log/2.0","frame":{"id":5}}"#;
        assert_eq!(LogLine::parse(reshaped).unwrap_err(), e);
        match e {
            LineError::NewerMajor(m) => {
                assert!(
                    m.contains("gcm-inspect/log/2.0") && m.contains("major version 1"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Other tools' lines stay foreign, a schema of no log is no decision.
        for text in [
            r#"{"note":"shift change"}"#,
            r#"{"schema":"other/1.0","frame":1}"#,
        ] {
            assert!(
                matches!(LogLine::parse(text), Err(LineError::NotDecision(_))),
                "{text}"
            );
        }
        assert_eq!(serde_json::to_value(line(1)).unwrap()["schema"], LOG_SCHEMA);
    }

    #[test]
    fn a_whole_but_garbage_last_line_is_cut_too() {
        let good = serde_json::to_string(&line(7)).unwrap();
        let bytes = format!("{good}\n{good}\n\0\0\0\0\n");
        assert_eq!(valid_prefix(bytes.as_bytes()), (2 * good.len() + 2, 2));
        assert_eq!(valid_prefix(b"garbage"), (0, 0));
    }

    /// Regression: frame ids restarted at 0 when the last whole line was
    /// JSON but not a decision (a line added by another tool).
    #[test]
    fn a_foreign_json_line_is_kept_and_ids_continue_after_the_last_decision() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let mut text = jsonl(40..43);
        let foreign = "{\"note\":\"shift change\",\"by\":\"ops\"}\n";
        text += foreign;
        std::fs::write(d.path().join(ACTIVE), &text).unwrap();
        let (_, rec) = DecisionLog::open(d.path(), &cfg(1 << 20, 1), m).unwrap();
        assert_eq!(rec.cut_bytes, 0);
        assert_eq!((rec.lines, rec.last_frame), (4, Some(42)));
        assert!(std::fs::read_to_string(d.path().join(ACTIVE))
            .unwrap()
            .ends_with(foreign));
    }

    #[test]
    fn ids_continue_after_the_highest_decision_in_any_log_file() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        // A rotated file whose last decision (frame 900) sits before more
        // than a read block of foreign lines; an active file with lower ids.
        let mut old = jsonl(898..901);
        let filler = format!("{{\"note\":\"{}\"}}\n", "x".repeat(1000));
        for _ in 0..600 {
            old += &filler;
        }
        assert!(old.len() > 512 << 10);
        std::fs::write(d.path().join("decisions.000001.jsonl"), &old).unwrap();
        let active = jsonl([5]);
        std::fs::write(d.path().join(ACTIVE), active).unwrap();
        let (_, rec) = DecisionLog::open(d.path(), &cfg(1 << 20, 1), m).unwrap();
        assert_eq!(rec.last_frame, Some(900));
        assert_eq!(
            last_decision_frame(&d.path().join("decisions.000001.jsonl")).unwrap(),
            Some(900)
        );
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
        let newest_rotated = &files[files.len() - 2];
        let last_line = std::fs::read_to_string(newest_rotated).unwrap();
        let last: LogLine = serde_json::from_str(last_line.lines().last().unwrap()).unwrap();
        let (_, rec) = DecisionLog::open(d.path(), &cfg(1 << 20, 1), m).unwrap();
        assert_eq!(rec.last_frame, Some(last.frame));
    }
}
