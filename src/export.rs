//! `gcm-inspect export`: reviewed frames as training data.
//!
//! Reads the labels reviewers gave (`labels.jsonl`, appended by `review`
//! and read with its reader, [`crate::review::labels`]: one line per act,
//! the newest line for a frame wins, an undo is a line of its own) and the
//! decision log they refer to, and writes a training manifest `export.csv` (`path,label,split`, the
//! format `train` reads) with a copy of each frame's `frame.png` under
//! `images/<label>/`. A frame whose evidence predates `frame.png` (format /1)
//! contributes its `input.png` (the model's input size) and is counted as
//! such; a frame whose evidence is gone is counted and left out. The split
//! is stratified by label and seeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::dataset::{csv_field, stratified_split_by_name};
use crate::error::{Error, IoContext, Result};
use crate::pipeline::sink::log::{log_files, LineError, LogLine};
use crate::review::labels::{LabelLine, Labels, LABELS};

/// What to export.
#[derive(Clone, Debug)]
pub struct Options {
    pub log: PathBuf,
    /// `labels.jsonl`'s folder.
    pub labels: PathBuf,
    /// Evidence folder, when the evidence was moved after the log was written.
    pub evidence: Option<PathBuf>,
    pub out: PathBuf,
    /// Only frames whose label differs from the decision.
    pub only_corrected: bool,
    /// Share of each label held out for validation.
    pub val_fraction: f64,
    pub seed: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub manifest: PathBuf,
    /// Frames per label and split.
    pub per_label: BTreeMap<String, BTreeMap<String, usize>>,
    pub corrected: usize,
    pub confirmed: usize,
    /// Exported from `input.png` (evidence format /1, no `frame.png`).
    pub from_input_png: usize,
    /// Labelled, but no evidence folder to copy from.
    pub without_evidence: Vec<u64>,
}

/// The frames with a label now, in frame order, with their newest act.
pub fn current_labels(dir: &Path) -> Result<BTreeMap<u64, LabelLine>> {
    let path = dir.join(LABELS);
    if !path.is_file() {
        return Err(Error::data(
            &path,
            "no labels here: review writes them (give --labels DIR where they are)",
        ));
    }
    let labels = Labels::read(dir)?;
    if labels.foreign > 0 {
        return Err(Error::data(
            &path,
            format!("{} line(s) are not reviewer acts", labels.foreign),
        ));
    }
    Ok(labels
        .frames()
        .filter_map(|f| {
            labels
                .latest(f)
                .filter(|l| l.label.is_some())
                .map(|l| (f, l.clone()))
        })
        .collect())
}

/// Decision log lines by frame id.
fn decisions(log: &Path) -> Result<BTreeMap<u64, LogLine>> {
    let mut out = BTreeMap::new();
    for f in log_files(log)? {
        let text = std::fs::read_to_string(&f).at(&f)?;
        for (i, raw) in text.split_inclusive('\n').enumerate() {
            if !raw.ends_with('\n') {
                continue;
            }
            match LogLine::parse(raw.trim_end()) {
                Ok(l) => {
                    out.insert(l.frame, l);
                }
                Err(LineError::NewerMajor(why)) => {
                    return Err(Error::data(&f, format!("line {}: {why}", i + 1)))
                }
                Err(LineError::NotDecision(_)) => {}
            }
        }
    }
    Ok(out)
}

/// Writes the export (see the module docs).
pub fn export(o: &Options) -> Result<Summary> {
    let labels = current_labels(&o.labels)?;
    let log = decisions(&o.log)?;
    let mut s = Summary::default();
    let mut rows: Vec<(u64, String, PathBuf)> = Vec::new();
    for (frame, l) in &labels {
        let label = l.label.clone().expect("current labels have one");
        let decided = log
            .get(frame)
            .map(|d| d.class.clone())
            .or_else(|| Some(l.previous_decision.clone()));
        let corrected = decided.as_deref() != Some(label.as_str());
        if o.only_corrected && !corrected {
            continue;
        }
        let ev = l
            .evidence
            .clone()
            .or_else(|| log.get(frame).and_then(|d| d.evidence.clone()));
        let dir = match (ev, &o.evidence) {
            (Some(e), Some(root)) => Some(root.join(e.file_name().unwrap_or_default())),
            (e, None) => e,
            (None, Some(_)) => None,
        };
        let Some(src) = dir.and_then(|d| picture(&d)) else {
            s.without_evidence.push(*frame);
            continue;
        };
        if src.file_name().is_some_and(|n| n == "input.png") {
            s.from_input_png += 1;
        }
        if corrected {
            s.corrected += 1;
        } else {
            s.confirmed += 1;
        }
        rows.push((*frame, label, src));
    }
    let names: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let (_, val) = stratified_split_by_name(&names, o.val_fraction, o.seed);
    let mut text = String::from("path,label,split\n");
    for (i, (frame, label, src)) in rows.iter().enumerate() {
        let split = if val.binary_search(&i).is_ok() {
            "val"
        } else {
            "train"
        };
        let rel = PathBuf::from("images")
            .join(crate::evidence::safe_name(label))
            .join(format!("f{frame:012}.png"));
        let dst = o.out.join(&rel);
        let parent = dst.parent().expect("has a folder");
        std::fs::create_dir_all(parent).at(parent)?;
        std::fs::copy(src, &dst).at(&dst)?;
        text.push_str(&format!(
            "{},{},{split}\n",
            csv_field(&rel.to_string_lossy()),
            csv_field(label)
        ));
        *s.per_label
            .entry(label.clone())
            .or_default()
            .entry(split.to_string())
            .or_default() += 1;
    }
    s.manifest = o.out.join("export.csv");
    std::fs::create_dir_all(&o.out).at(&o.out)?;
    crate::fs::write_atomic(&s.manifest, text.as_bytes())?;
    Ok(s)
}

/// The evidence's full-resolution frame, else its model input.
fn picture(dir: &Path) -> Option<PathBuf> {
    ["frame.png", "input.png"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(frame: u64, label: Option<&str>, undo: bool) -> String {
        serde_json::to_string(&LabelLine {
            frame,
            evidence: None,
            label: label.map(str::to_string),
            previous_decision: "ok".into(),
            model: "m".into(),
            reviewer: "r".into(),
            time_unix_us: frame,
            undo,
        })
        .unwrap()
    }

    #[test]
    fn the_newest_act_wins_undo_restores_and_a_torn_tail_is_ignored() {
        let t = tempfile::tempdir().unwrap();
        let acts = [
            act(1, Some("crack"), false),
            act(2, Some("ok"), false),
            act(1, Some("ok"), false),
            act(2, None, true), // undo of frame 2's only label: unreviewed
            act(3, Some("crack"), false),
            act(5, Some("crack"), false),
            act(5, Some("ok"), false),
            act(5, Some("crack"), true), // undo: back to crack
        ];
        let text = acts.join("\n") + "\n" + r#"{"frame":4,"lab"#;
        std::fs::write(t.path().join(LABELS), text).unwrap();
        let got = current_labels(t.path()).unwrap();
        let got: Vec<(u64, &str)> = got
            .iter()
            .map(|(f, l)| (*f, l.label.as_deref().unwrap()))
            .collect();
        assert_eq!(got, vec![(1, "ok"), (3, "crack"), (5, "crack")]);
        std::fs::write(t.path().join(LABELS), "not json\n").unwrap();
        let e = current_labels(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("labels.jsonl") && e.contains("not reviewer acts"),
            "{e}"
        );
        std::fs::remove_file(t.path().join(LABELS)).unwrap();
        let e = current_labels(t.path()).unwrap_err().to_string();
        assert!(e.contains("labels.jsonl") && e.contains("--labels"), "{e}");
    }
}
