//! `labels.jsonl`: what reviewers said about decisions, one JSON line per
//! act, appended and never rewritten.
//!
//! * A line names the frame, its evidence folder, the label (`null`: back to
//!   unreviewed), the decision it reviews, the model that made it, the
//!   reviewer and the time. The newest line for a frame is its label; an
//!   undo is a new line restoring the label before the act it undoes.
//! * The file is written as the decision log is: each line with a single
//!   `write` of the whole line and an fsync before the act is acknowledged;
//!   a torn tail (a power cut mid-line) is cut when the file is opened again
//!   ([`crate::pipeline::sink::log::cut_torn_tail`]).
//! * One review server writes a labels folder at a time (an exclusive lock
//!   on the file, on Linux).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::pipeline::sink::log::cut_torn_tail;

pub const LABELS: &str = "labels.jsonl";

/// One reviewer act.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelLine {
    /// The decision log's frame id.
    pub frame: u64,
    /// The frame's evidence folder, as the decision log names it.
    #[serde(default)]
    pub evidence: Option<PathBuf>,
    /// The true class; `None`: unreviewed again (an undo of the first label).
    pub label: Option<String>,
    /// The class the daemon decided.
    pub previous_decision: String,
    /// The id of the model that decided.
    pub model: String,
    pub reviewer: String,
    /// When, microseconds since the Unix epoch.
    pub time_unix_us: u64,
    /// This act undoes the one before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undo: bool,
}

/// The review state of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unreviewed,
    /// The label is the decided class.
    Confirmed,
    /// The label is another class.
    Corrected,
}

impl Status {
    pub fn of(decided: &str, label: Option<&str>) -> Status {
        match label {
            None => Status::Unreviewed,
            Some(l) if l == decided => Status::Confirmed,
            Some(_) => Status::Corrected,
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "unreviewed" => Some(Status::Unreviewed),
            "confirmed" => Some(Status::Confirmed),
            "corrected" => Some(Status::Corrected),
            _ => None,
        }
    }
}

/// The labels of a log: every act, by frame in file order.
#[derive(Debug, Default)]
pub struct Labels {
    history: HashMap<u64, Vec<LabelLine>>,
    /// Lines of the file that are not label lines (skipped).
    pub foreign: u64,
}

impl Labels {
    /// Reads `labels.jsonl` in `dir` (no file: no labels). A torn last line
    /// is ignored here; [`LabelLog::open`] cuts it.
    pub fn read(dir: &Path) -> Result<Labels> {
        let path = dir.join(LABELS);
        let mut labels = Labels::default();
        if !path.exists() {
            return Ok(labels);
        }
        let text = std::fs::read(&path).at(&path)?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in text[..whole].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<LabelLine>(line) {
                Ok(l) => labels.push(l),
                Err(_) => labels.foreign += 1,
            }
        }
        Ok(labels)
    }

    fn push(&mut self, l: LabelLine) {
        self.history.entry(l.frame).or_default().push(l);
    }

    /// The frames with at least one act, in frame order.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        let mut f: Vec<u64> = self.history.keys().copied().collect();
        f.sort_unstable();
        f.into_iter()
    }

    /// The frame's current label (its newest line's).
    pub fn label(&self, frame: u64) -> Option<&str> {
        self.latest(frame).and_then(|l| l.label.as_deref())
    }

    pub fn latest(&self, frame: u64) -> Option<&LabelLine> {
        self.history.get(&frame).and_then(|h| h.last())
    }

    /// Every act on the frame, oldest first.
    pub fn history(&self, frame: u64) -> &[LabelLine] {
        self.history.get(&frame).map_or(&[], Vec::as_slice)
    }

    /// The label an undo of the frame's newest act restores: the label the
    /// frame had before that act (acts that were undone are skipped).
    pub fn before_last(&self, frame: u64) -> Option<Option<String>> {
        let h = self.history.get(&frame)?;
        // Replay the acts as a stack: a label pushes, an undo pops.
        let mut stack: Vec<Option<String>> = Vec::new();
        for l in h {
            if l.undo {
                stack.pop();
            } else {
                stack.push(l.label.clone());
            }
        }
        stack.pop()?;
        Some(stack.pop().flatten())
    }
}

/// `labels.jsonl` open for appending.
pub struct LabelLog {
    path: PathBuf,
    file: File,
    /// Length up to the last whole line.
    bytes: u64,
    pub labels: Labels,
}

impl LabelLog {
    /// Opens (creating `dir` and the file) for appending: cuts a torn tail,
    /// takes the lock, reads the labels so far.
    pub fn open(dir: &Path) -> Result<LabelLog> {
        std::fs::create_dir_all(dir).at(dir)?;
        let path = dir.join(LABELS);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        lock(&file, &path)?;
        cut_torn_tail(&path)?;
        let bytes = file.metadata().at(&path)?.len();
        let labels = Labels::read(dir)?;
        Ok(LabelLog {
            path,
            file,
            bytes,
            labels,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one act as one write, fsyncs it, then counts it. On failure
    /// the file is cut back to its last whole line and the act is not
    /// counted.
    pub fn append(&mut self, line: LabelLine) -> Result<()> {
        let mut text = serde_json::to_vec(&line)
            .map_err(|e| Error::Runtime(format!("cannot serialise a label line: {e}")))?;
        text.push(b'\n');
        let written = self
            .file
            .write_all(&text)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.bytes);
            return Err(Error::Io {
                path: self.path.clone(),
                source: e,
            });
        }
        self.bytes += text.len() as u64;
        self.labels.push(line);
        Ok(())
    }
}

/// An exclusive advisory lock for the server's lifetime: two servers
/// appending to one file would each hold a stale view of the labels.
#[cfg(target_os = "linux")]
fn lock(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(Error::Usage(format!(
            "{}: another review server writes these labels (the file is locked); use --labels to pick another folder",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn lock(_: &File, _: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(frame: u64, label: Option<&str>, undo: bool) -> LabelLine {
        LabelLine {
            frame,
            evidence: None,
            label: label.map(str::to_string),
            previous_decision: "ok".into(),
            model: "m".into(),
            reviewer: "r".into(),
            time_unix_us: 1,
            undo,
        }
    }

    #[test]
    fn newest_wins_undo_restores_and_a_torn_tail_is_cut_on_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut log = LabelLog::open(d.path()).unwrap();
            log.append(act(3, Some("crack"), false)).unwrap();
            log.append(act(3, Some("ok"), false)).unwrap();
            assert_eq!(log.labels.label(3), Some("ok"));
            assert_eq!(log.labels.before_last(3), Some(Some("crack".into())));
            log.append(act(3, Some("crack"), true)).unwrap();
            assert_eq!(log.labels.label(3), Some("crack"));
            assert_eq!(log.labels.before_last(3), Some(None));
            assert_eq!(log.labels.before_last(4), None);
        }
        let p = d.path().join(LABELS);
        let whole = std::fs::read(&p).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"frame":4,"label":"cr"#);
        std::fs::write(&p, &torn).unwrap();
        assert_eq!(Labels::read(d.path()).unwrap().history(4), &[]);
        let mut log = LabelLog::open(d.path()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), whole);
        log.append(act(4, Some("ok"), false)).unwrap();
        let again = Labels::read(d.path()).unwrap();
        assert_eq!(again.history(3).len(), 3);
        assert_eq!(
            (again.label(3), again.label(4)),
            (Some("crack"), Some("ok"))
        );
        assert_eq!(again.foreign, 0);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _first = LabelLog::open(d.path()).unwrap();
        let e = LabelLog::open(d.path()).err().expect("locked");
        assert!(e.to_string().contains("another review server"), "{e}");
    }

    #[test]
    fn status_of_a_label() {
        assert_eq!(Status::of("ok", None), Status::Unreviewed);
        assert_eq!(Status::of("ok", Some("ok")), Status::Confirmed);
        assert_eq!(Status::of("ok", Some("crack")), Status::Corrected);
    }
}
