//! The auditor's re-check of a decision log (`gcm-inspect verify`): every
//! line of the log (rotated files included, oldest first) and, for every
//! decision with evidence, the class scores recomputed from the stored files
//! (divergence check (a)) against the logged decision. Evidence deleted by
//! the quota is counted, not an error; lines that are not decision lines
//! (added by another tool) are reported with their place and skipped; a line
//! of a newer major schema version stops the audit with its place (its
//! fields may not mean what this build thinks), while fields of a newer minor
//! version are ignored.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::evidence::reproduce;
use crate::pipeline::sink::log::{log_files, LineError, LogLine};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub log_files: usize,
    pub decisions: u64,
    /// Decisions the daemon itself logged as divergent.
    pub logged_divergent: u64,
    pub with_evidence: u64,
    pub reproduced: u64,
    /// Evidence named by the log but deleted by the quota.
    pub evidence_removed: u64,
    pub divergent: Vec<Divergent>,
    /// Lines that are not decision lines, as `file:line: why`.
    pub foreign: Vec<String>,
    /// A last line without its newline (a writer still at work, or a crash;
    /// the daemon cuts it on its next start).
    pub torn_tail: bool,
}

#[derive(Debug, Serialize)]
pub struct Divergent {
    pub frame: u64,
    pub at: String,
    pub evidence: PathBuf,
    pub why: String,
}

fn check_one(line: &LogLine, dir: &Path) -> std::result::Result<(), String> {
    let (rec, rep) = reproduce(dir).map_err(|e| format!("cannot be read: {e}"))?;
    if !rep.ok() {
        return Err(format!(
            "stored CCMs give class {} (recorded {}); out of tolerance: {:?}; max error {:.3e}",
            rep.decision, rep.recorded_decision, rep.out_of_tolerance, rep.max_abs_error
        ));
    }
    if rec.decision != line.class_index || rec.classes != line.classes {
        return Err(format!(
            "evidence records class {} of {:?}, the log says {} of {:?}",
            rec.decision, rec.classes, line.class_index, line.classes
        ));
    }
    if rec.model_id.as_deref().is_some_and(|m| m != line.model) {
        return Err(format!(
            "evidence is from model {:?}, the log says {}",
            rec.model_id, line.model
        ));
    }
    for (e, &s) in rec.ccm.iter().zip(&line.scores) {
        if (e.score as f32 - s).abs() > 1e-6 * s.abs().max(1.0) {
            return Err(format!(
                "class {}: evidence records score {}, the log says {s}",
                e.class, e.score
            ));
        }
    }
    Ok(())
}

pub fn verify(log_dir: &Path, evidence_dir: Option<&Path>) -> Result<Report> {
    let files = log_files(log_dir)?;
    if files.is_empty() {
        return Err(Error::data(
            log_dir,
            "no decision log (decisions.jsonl) in this folder",
        ));
    }
    let mut r = Report {
        log_files: files.len(),
        ..Report::default()
    };
    let last = files.len() - 1;
    for (fi, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).at(f)?;
        let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
        if fi == last && lines.last().is_some_and(|l| !l.ends_with('\n')) {
            lines.pop();
            r.torn_tail = true;
        }
        for (i, raw) in lines.iter().enumerate() {
            let at = format!("{}:{}", f.display(), i + 1);
            let line = match LogLine::parse(raw.trim_end()) {
                Ok(l) => l,
                Err(LineError::NewerMajor(why)) => {
                    return Err(Error::data(f, format!("line {}: {why}", i + 1)));
                }
                Err(LineError::NotDecision(e)) => {
                    r.foreign.push(format!("{at}: not a decision line ({e})"));
                    continue;
                }
            };
            r.decisions += 1;
            r.logged_divergent += line.divergent as u64;
            let Some(ev) = &line.evidence else { continue };
            r.with_evidence += 1;
            let dir = match evidence_dir {
                Some(d) => d.join(ev.file_name().unwrap_or_default()),
                None => ev.clone(),
            };
            if !dir.exists() {
                r.evidence_removed += 1;
                continue;
            }
            match check_one(&line, &dir) {
                Ok(()) => r.reproduced += 1,
                Err(why) => r.divergent.push(Divergent {
                    frame: line.frame,
                    at,
                    evidence: dir,
                    why,
                }),
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Verdict;

    /// A line as the daemon wrote it before verdicts, and one with them.
    const BEFORE: &str = r#"{"frame":7,"captured_unix_us":1,"source":"a.png","class":"crack","class_index":0,"classes":["crack","ok"],"scores":[0.5,0.25],"probabilities":[0.56,0.44],"margin":0.25,"latency":{"queue_ms":0.1,"preprocess_ms":0.2,"infer_ms":3.0,"capture_to_decision_ms":3.3},"model":"abc","checks":{},"divergent":false}"#;
    const AFTER: &str = r#"{"frame":8,"captured_unix_us":2,"source":"b.png","class":"crack","class_index":0,"classes":["crack","ok"],"scores":[0.5,0.25],"probabilities":[0.56,0.44],"margin":0.25,"verdict":"review","reason":"class crack p=0.56 below 0.8","latency":{"queue_ms":0.1,"preprocess_ms":0.2,"infer_ms":3.0,"capture_to_decision_ms":3.3},"model":"abc","checks":{},"divergent":false}"#;

    #[test]
    fn logs_written_before_verdicts_still_verify_beside_new_lines() {
        let old: LogLine = serde_json::from_str(BEFORE).unwrap();
        assert_eq!((old.verdict, old.reason.as_deref()), (None, None));
        // Written back, an old line stays as it was: no empty verdict keys.
        assert_eq!(serde_json::to_string(&old).unwrap(), BEFORE);
        let new: LogLine = serde_json::from_str(AFTER).unwrap();
        assert_eq!(new.verdict, Some(Verdict::Review));
        assert_eq!(serde_json::to_string(&new).unwrap(), AFTER);
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join(crate::pipeline::sink::log::ACTIVE);
        std::fs::write(&log, format!("{BEFORE}\n{AFTER}\n")).unwrap();
        let r = verify(d.path(), None).unwrap();
        assert_eq!(r.decisions, 2);
        assert!(r.foreign.is_empty(), "{:?}", r.foreign);
        assert!(r.divergent.is_empty() && !r.torn_tail);
    }

    #[test]
    fn a_line_of_a_newer_major_schema_stops_the_audit_naming_its_place() {
        let mut v: serde_json::Value = serde_json::from_str(AFTER).unwrap();
        v["schema"] = "gcm-inspect/log/1.3".into();
        v["new_in_1_3"] = 1.into();
        let minor = v.to_string();
        v["schema"] = "gcm-inspect/log/2.0".into();
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join(crate::pipeline::sink::log::ACTIVE);
        std::fs::write(&log, format!("{BEFORE}\n{minor}\n")).unwrap();
        let r = verify(d.path(), None).unwrap();
        assert_eq!((r.decisions, r.foreign.len()), (2, 0));
        std::fs::write(&log, format!("{BEFORE}\n{minor}\n{v}\n")).unwrap();
        let e = verify(d.path(), None).unwrap_err().to_string();
        assert!(
            e.contains("decisions.jsonl")
                && e.contains("line 3")
                && e.contains("gcm-inspect/log/2.0"),
            "{e}"
        );
    }
}
