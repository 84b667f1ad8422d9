//! The operating-point sweep of `eval --sweep`: how the line's verdicts on
//! a labelled set change with `decision.min_probability`, and which value
//! to configure.
//!
//! Conventions:
//!
//! - The question is binary: is the part defective? A frame is *defective*
//!   when its true class is one of the reject classes, *good* otherwise.
//! - Each frame's verdict at a threshold comes from [`crate::verdict::judge`],
//!   the daemon's own rule, with `min_probability` set to the threshold and
//!   the rest of the `decision:` section (margin band, health checks) as
//!   configured. Every file is a different frame (`frozen` never applies).
//! - A *miss* is a defective frame given `ok`; a *false reject* a good frame
//!   given `ng`. A frame sent to `review` is neither passed nor rejected
//!   automatically: it is counted apart, as a person's work.
//! - `miss_rate` = misses / defective frames; `recall` = 1 - `miss_rate`
//!   (defective frames stopped, by `ng` or by `review`);
//!   `false_reject_rate` = false rejects / good frames; `precision` =
//!   defective frames among those given `ng` (1 when none is: no wrong
//!   rejection was made); `review_rate` = frames in review / all frames.
//! - The *cost* of a threshold is (frames in review + false rejects) / all
//!   frames: the parts a person must look at or that are scrapped wrongly.
//! - The suggested threshold is the one of lowest cost among those whose
//!   miss rate is at most `max_miss`, the lowest threshold on a tie. When
//!   none meets `max_miss`, it is the one of lowest miss rate (then cost,
//!   then threshold), flagged as not meeting it.
//!
//! The ROC and PR curves ([`curves`]) rank frames by a *reject score*, the
//! summed probability of the reject classes, without any review band.

use std::path::PathBuf;

use crate::config::DecisionConfig;
use crate::decision::Decision;
use crate::verdict::{judge, FrameStats, Verdict};

pub mod curves;
pub mod plot;
pub mod write;

/// One image of the set as the sweep sees it.
#[derive(Clone, Debug)]
pub struct Scored {
    pub path: PathBuf,
    /// Index of the true class.
    pub label: usize,
    pub decision: Decision,
    /// Health statistics of the 8-bit input the model saw.
    pub stats: FrameStats,
}

/// Verdicts at one threshold, split by the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub defect_ok: usize,
    pub defect_ng: usize,
    pub defect_review: usize,
    pub good_ok: usize,
    pub good_ng: usize,
    pub good_review: usize,
}

/// Share `a / b`, or `empty` when `b` is 0.
fn share(a: usize, b: usize, empty: f64) -> f64 {
    match b {
        0 => empty,
        _ => a as f64 / b as f64,
    }
}

impl Counts {
    pub fn add(&mut self, defective: bool, v: Verdict) {
        let slot = match (defective, v) {
            (true, Verdict::Ok) => &mut self.defect_ok,
            (true, Verdict::Ng) => &mut self.defect_ng,
            (true, Verdict::Review) => &mut self.defect_review,
            (false, Verdict::Ok) => &mut self.good_ok,
            (false, Verdict::Ng) => &mut self.good_ng,
            (false, Verdict::Review) => &mut self.good_review,
        };
        *slot += 1;
    }
    pub fn defective(&self) -> usize {
        self.defect_ok + self.defect_ng + self.defect_review
    }
    pub fn good(&self) -> usize {
        self.good_ok + self.good_ng + self.good_review
    }
    pub fn total(&self) -> usize {
        self.defective() + self.good()
    }
    pub fn review(&self) -> usize {
        self.defect_review + self.good_review
    }
    pub fn miss_rate(&self) -> f64 {
        share(self.defect_ok, self.defective(), 0.0)
    }
    pub fn recall(&self) -> f64 {
        1.0 - self.miss_rate()
    }
    pub fn precision(&self) -> f64 {
        share(self.defect_ng, self.defect_ng + self.good_ng, 1.0)
    }
    pub fn false_reject_rate(&self) -> f64 {
        share(self.good_ng, self.good(), 0.0)
    }
    pub fn review_rate(&self) -> f64 {
        share(self.review(), self.total(), 0.0)
    }
    /// (review + false rejects) / all frames.
    pub fn cost(&self) -> f64 {
        share(self.review() + self.good_ng, self.total(), 0.0)
    }
}

/// The verdicts at one threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub threshold: f64,
    pub counts: Counts,
}

/// Whether each class is a reject class, in class order.
pub fn reject_mask(classes: &[String], reject: &[String]) -> Vec<bool> {
    classes.iter().map(|c| reject.contains(c)).collect()
}

/// `cfg` with `min_probability` at `threshold`.
pub fn at(cfg: &DecisionConfig, threshold: f64) -> DecisionConfig {
    DecisionConfig {
        min_probability: threshold,
        ..cfg.clone()
    }
}

/// The daemon's verdict on `s` under `cfg` (see [`crate::verdict::judge`]).
pub fn verdict(cfg: &DecisionConfig, s: &Scored) -> Verdict {
    judge(cfg, &s.stats, 1, &s.decision).verdict
}

/// The verdicts on `set` at `threshold`; `reject[class]` says which true
/// classes are defects.
pub fn row(cfg: &DecisionConfig, set: &[Scored], reject: &[bool], threshold: f64) -> Row {
    let cfg = at(cfg, threshold);
    let mut counts = Counts::default();
    for s in set {
        counts.add(reject[s.label], verdict(&cfg, s));
    }
    Row { threshold, counts }
}

/// The probability of the decided class, as `judge` compares it.
fn decided_probability(d: &Decision) -> f64 {
    d.probabilities.get(d.class_index).copied().unwrap_or(0.0) as f64
}

/// The shortest decimal number in `(lo, hi]` (`hi` itself when none of up
/// to 9 digits is).
pub fn shortest_decimal(lo: f64, hi: f64) -> f64 {
    for digits in 1..=9 {
        let step = 10f64.powi(digits);
        let x = ((lo * step).floor() + 1.0) / step;
        // Printed and read back, so that the value is the decimal itself.
        let x: f64 = format!("{x:.*}", digits as usize).parse().unwrap_or(hi);
        if x > lo && x <= hi {
            return x;
        }
    }
    hi
}

/// The thresholds swept: 0 to 1 by 0.01, and one per distinct outcome on
/// `set` (a frame goes to review when its probability is below the
/// threshold, so the outcome changes just above each distinct probability;
/// the shortest decimal of each interval stands for it). Sorted, distinct.
pub fn thresholds(set: &[Scored]) -> Vec<f64> {
    let mut ps: Vec<f64> = set
        .iter()
        .map(|s| decided_probability(&s.decision))
        .collect();
    ps.retain(|p| (0.0..1.0).contains(p));
    ps.sort_by(f64::total_cmp);
    ps.dedup();
    let mut ts: Vec<f64> = (0..=100).map(|i| i as f64 / 100.0).collect();
    let uppers = ps.iter().skip(1).copied().chain([1.0]);
    ts.extend(
        ps.iter()
            .zip(uppers)
            .map(|(&lo, hi)| shortest_decimal(lo, hi)),
    );
    ts.sort_by(f64::total_cmp);
    ts.dedup();
    ts
}

/// Every row of the sweep, by increasing threshold.
pub fn sweep(cfg: &DecisionConfig, set: &[Scored], reject: &[bool]) -> Vec<Row> {
    thresholds(set)
        .into_iter()
        .map(|t| row(cfg, set, reject, t))
        .collect()
}

/// The suggested operating point (see the module's conventions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    pub row: Row,
    /// Whether its miss rate is at most `max_miss`.
    pub meets: bool,
}

/// The row of lowest cost with a miss rate at most `max_miss` (lowest
/// threshold on a tie); without one, the row of lowest miss rate.
pub fn choose(rows: &[Row], max_miss: f64) -> Option<Choice> {
    let key = |r: &&Row| (r.counts.cost(), r.threshold);
    let cmp = |a: &&Row, b: &&Row| key(a).partial_cmp(&key(b)).expect("finite rates");
    let meeting = rows.iter().filter(|r| r.counts.miss_rate() <= max_miss);
    if let Some(r) = meeting.min_by(cmp) {
        return Some(Choice {
            row: *r,
            meets: true,
        });
    }
    let best = |r: &&Row| (r.counts.miss_rate(), r.counts.cost(), r.threshold);
    let r = rows
        .iter()
        .min_by(|a, b| best(a).partial_cmp(&best(b)).expect("finite rates"))?;
    Some(Choice {
        row: *r,
        meets: false,
    })
}

/// The summed probability of the reject classes: the score the ROC and PR
/// curves rank frames by (at most 1: f32 rounding may sum past it).
pub fn reject_score(d: &Decision, reject: &[bool]) -> f64 {
    let sum: f64 = d
        .probabilities
        .iter()
        .zip(reject)
        .filter(|(_, &r)| r)
        .map(|(&p, _)| p as f64)
        .sum();
    sum.min(1.0)
}

#[cfg(test)]
mod tests;
