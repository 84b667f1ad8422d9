//! The sink stage: divergence checks, evidence, the decision log line and
//! the per-decision metrics, in that order, one decision at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::infer::Decided;
use super::metrics::Metrics;
use crate::decision::argmax;
use crate::error::Result;
use crate::evidence::{self, Evidence};

pub mod evidence_store;
pub mod log;
pub mod retention;

use evidence_store::EvidenceStore;
use log::{Check, Checks, DecisionLog, LogLine};

pub struct Sinks {
    pub rx: Receiver<Decided>,
    pub log: DecisionLog,
    pub store: EvidenceStore,
    pub metrics: Arc<Metrics>,
    /// Evidence writes failing since (first failure, failures so far): the
    /// daemon's log names the first and the recovery, not every frame.
    pub evidence_failing: Option<(Instant, u64)>,
}

/// How long the stop waits for a decision log that cannot be written.
const FINAL_LOG_PATIENCE: Duration = Duration::from_secs(2);

/// Check (b): the reference path's scores against the served ones. The
/// reference prepares the captured frame again with the CPU backend of the
/// preprocessing contract and runs the unfolded network on the CPU, so on a
/// GPU it shares no code with the served path but the contract.
pub fn reference_check(d: &Decided) -> Result<Check> {
    let planar = crate::preprocess::reference(&d.source, &d.bundle.prep)
        .map_err(|e| crate::error::Error::Runtime(format!("reference preprocessing: {e}")))?;
    let raw = planar.to_tensor(&Device::Cpu)?;
    let r = d.bundle.reference.scores(&raw)?;
    let s = &d.decision.scores;
    let max_abs_error = s
        .iter()
        .zip(&r)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    let tol = d.bundle.checks.reference_tolerance as f64;
    let same_class = argmax(&r) == d.decision.class_index;
    let ok = r.len() == s.len() && same_class && max_abs_error <= tol && max_abs_error.is_finite();
    Ok(Check {
        ok,
        max_abs_error: max_abs_error.is_finite().then_some(max_abs_error),
        detail: (!ok).then(|| {
            format!(
                "reference ({}) scores {r:?} decide {}, served scores {s:?} decide {}; tolerance {tol}",
                d.bundle.reference.describe(),
                d.bundle.predictor.classes()[argmax(&r).min(r.len().saturating_sub(1))],
                d.decision.class
            )
        }),
    })
}

fn build_evidence(d: &Decided) -> Result<Evidence> {
    let b = &d.bundle;
    let frame = crate::preprocess::full_frame(&d.source, &b.prep)
        .map_err(|e| crate::error::Error::Runtime(format!("the captured frame: {e}")))?;
    let seen = evidence::Seen {
        input: &d.planar,
        frame: Some(&frame),
        frame_id: Some(d.frame),
        captured_unix_us: Some(d.captured_unix_us),
        name: d.name.as_deref(),
    };
    evidence::of_decision(
        &b.predictor,
        &seen,
        &d.maps,
        &d.decision,
        b.evidence.heatmaps_all_classes,
    )
}

/// Check (a) as a log-line record.
fn as_check(r: &evidence::Reproduction, classes: &[String]) -> Check {
    let ok = r.ok();
    Check {
        ok,
        max_abs_error: r.max_abs_error.is_finite().then_some(r.max_abs_error),
        detail: (!ok).then(|| r.describe_failure(classes)),
    }
}

/// Check (a) on evidence built in memory (the quantised data as it is stored).
fn evidence_check(ev: &Evidence) -> Check {
    as_check(&ev.check, &ev.record.classes)
}

/// Check (a) for a frame whose evidence is not kept: the evidence's own
/// quantisation applied in memory ([`evidence::check`]), without encoding
/// files nobody will read.
pub fn quantised_check(d: &Decided) -> Check {
    let classes = d.bundle.predictor.classes();
    match evidence::check(&d.maps, classes, &d.decision.scores, d.decision.class_index) {
        Ok(r) => as_check(&r, classes),
        Err(e) => Check {
            ok: false,
            max_abs_error: None,
            detail: Some(format!("the evidence check failed: {e}")),
        },
    }
}

/// Whether frame `id` is one of every `n` (0: none).
fn every(n: u64, id: u64) -> bool {
    n > 0 && id.is_multiple_of(n)
}

impl Sinks {
    /// Until the decision queue is closed and empty; then the last waiting
    /// log lines (if the log could not be written) and a final fsync.
    pub fn run(mut self) -> Result<()> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(d) => self.handle(d)?,
                Err(RecvTimeoutError::Timeout) => self.log.tick(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.log.finish(FINAL_LOG_PATIENCE);
        Ok(())
    }

    /// Writes kept evidence; a failure (a full disk, an I/O error) is counted
    /// and returned as the reason for the log line, and inspection goes on.
    fn keep(&mut self, id: u64, ev: &Evidence) -> (Option<std::path::PathBuf>, Option<String>) {
        match self.store.store(id, ev) {
            Ok(dir) => {
                if let Some((since, n)) = self.evidence_failing.take() {
                    tracing::warn!(
                        frame = id,
                        "evidence kept again after {:.1} s ({n} frames' evidence not kept)",
                        since.elapsed().as_secs_f64()
                    );
                }
                (dir, None)
            }
            Err(e) => {
                self.metrics.evidence_write_failures.inc();
                match &mut self.evidence_failing {
                    Some((_, n)) => *n += 1,
                    None => {
                        tracing::error!(
                            frame = id,
                            "evidence not kept: {e}; inspection goes on, and each decision's log line says why its evidence is missing"
                        );
                        self.evidence_failing = Some((Instant::now(), 1));
                    }
                }
                (None, Some(format!("not kept: {e}")))
            }
        }
    }

    fn handle(&mut self, d: Decided) -> Result<()> {
        let t0 = Instant::now();
        let b = d.bundle.clone();
        if b.evidence.quota_bytes != self.store.quota() {
            if let Err(e) = self.store.set_quota(b.evidence.quota_bytes) {
                tracing::error!("evidence over the new quota could not all be deleted: {e}");
            }
        }
        let policy = &b.evidence;
        let id = d.frame;
        let selected = policy.selects(&d.decision.class, d.decision.margin, id);
        let mut checks = Checks::default();
        let mut built = None;
        if selected {
            built = Some(self.checked_evidence(&d, &mut checks));
        } else if every(b.checks.evidence_every_nth_frame, id) {
            self.metrics.evidence_checks.inc();
            let c = quantised_check(&d);
            self.note_evidence_check(id, &c);
            checks.evidence = Some(c);
        }
        if every(b.checks.reference_every_nth_frame, id) {
            self.metrics.reference_checks.inc();
            let c = match reference_check(&d) {
                Ok(c) => c,
                Err(e) => Check {
                    ok: false,
                    max_abs_error: None,
                    detail: Some(format!("the reference path failed: {e}")),
                },
            };
            if !c.ok {
                self.metrics.reference_divergent.inc();
                tracing::warn!(
                    frame = id,
                    "divergence (reference cross-check): {}",
                    c.detail.as_deref().unwrap_or("")
                );
            }
            checks.reference = Some(c);
        }
        let divergent = checks.divergent();
        let keep = selected || (divergent && policy.divergent);
        if keep && built.is_none() {
            // Kept because divergent: build the files and check them as stored.
            built = Some(self.checked_evidence(&d, &mut checks));
        }
        let (evidence, evidence_error) = match (keep, built) {
            (true, Some(Some(ev))) => self.keep(id, &ev),
            _ => (None, None),
        };
        let divergent = checks.divergent();
        let dec = &d.decision;
        let line = LogLine {
            schema: Some(log::LOG_SCHEMA.to_string()),
            frame: id,
            captured_unix_us: d.captured_unix_us,
            source: d.name.clone(),
            class: dec.class.clone(),
            class_index: dec.class_index,
            classes: b.predictor.classes().to_vec(),
            scores: dec.scores.clone(),
            probabilities: dec.probabilities.clone(),
            margin: dec.margin,
            verdict: Some(d.judged.verdict),
            reason: Some(d.judged.reason.clone()),
            latency: d.latency.clone(),
            model: b.model_id().to_string(),
            checks,
            divergent,
            evidence,
            evidence_error,
        };
        self.log.append(&line)?;
        self.metrics.decided(&dec.class);
        self.metrics.judged(&d.judged);
        self.metrics.latency_sinks.observe(t0.elapsed());
        Ok(())
    }

    /// Builds the evidence in memory and records check (a) on it. `None` when
    /// it could not be built (recorded as a failed check).
    fn checked_evidence(&self, d: &Decided, checks: &mut Checks) -> Option<Evidence> {
        self.metrics.evidence_checks.inc();
        let (check, ev) = match build_evidence(d) {
            Ok(ev) => (evidence_check(&ev), Some(ev)),
            Err(e) => (
                Check {
                    ok: false,
                    max_abs_error: None,
                    detail: Some(format!("evidence could not be built: {e}")),
                },
                None,
            ),
        };
        self.note_evidence_check(d.frame, &check);
        checks.evidence = Some(check);
        ev
    }

    fn note_evidence_check(&self, frame: u64, check: &Check) {
        if !check.ok {
            self.metrics.evidence_divergent.inc();
            tracing::warn!(
                frame,
                "divergence (evidence reproduction): {}",
                check.detail.as_deref().unwrap_or("")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::DeviceMaps;
    use crate::preprocess::{self, FrameData};
    use std::path::Path;

    fn decided(dir: &Path) -> Decided {
        let bundle = Arc::new(crate::pipeline::model::test_bundle(dir));
        let source = FrameData::Grey {
            width: 8,
            height: 8,
            bytes: (0..64).map(|i| (i * 4) as u8).collect(),
        };
        let prepared = preprocess::prepare(&source, &bundle.prep, &Device::Cpu).unwrap();
        let out = bundle
            .predictor
            .forward(crate::model::Input::Scaled(&prepared.scaled))
            .unwrap();
        let decision = bundle.predictor.decide(&out.scores).unwrap().remove(0);
        let maps = DeviceMaps::from_batch(&out.scaled, &out.cwm, 0).unwrap();
        let stats = crate::verdict::FrameStats::of(&prepared.planar.data);
        let judged = crate::verdict::judge(&bundle.decision, &stats, 1, &decision);
        Decided {
            frame: 0,
            captured_unix_us: 0,
            name: None,
            bundle,
            decision,
            judged,
            planar: prepared.planar,
            maps,
            source,
            latency: Default::default(),
        }
    }

    #[test]
    fn in_memory_check_agrees_with_the_written_evidence_and_catches_wrong_scores() {
        let t = tempfile::tempdir().unwrap();
        let mut d = decided(t.path());
        let fast = quantised_check(&d);
        let built = evidence_check(&build_evidence(&d).unwrap());
        assert!(fast.ok && built.ok, "{fast:?} {built:?}");
        assert_eq!(fast.max_abs_error, built.max_abs_error);
        // The reference path agrees with the served one.
        let r = reference_check(&d).unwrap();
        assert!(r.ok, "{r:?}");
        // A score that does not match its CCM (a wrong scoring kernel) is caught
        // by both forms of check (a) and by check (b).
        d.decision.scores[1] += 0.5;
        let fast = quantised_check(&d);
        let built = evidence_check(&build_evidence(&d).unwrap());
        assert!(!fast.ok && !built.ok, "{fast:?} {built:?}");
        assert!(!reference_check(&d).unwrap().ok);
    }
}
