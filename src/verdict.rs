//! The verdict on a part: `ok`, `ng` (reject) or `review` (a person must
//! look), from the decision, the operating point and the frame's health.
//!
//! A decision is an argmax and always names a class; a verdict is what the
//! line acts on. The rules, in order (the first that applies gives the
//! verdict and its reason):
//!
//! 1. Frame health, measured on the 8-bit input the model saw: too many
//!    pixels at 0 (`dark`: lights off, lens cap) or at the top value
//!    (`saturated`), too little contrast (`flat`: blank, fogged or badly
//!    blurred), or the same frame as the ones before (`frozen`: a stalled
//!    camera repeating its buffer). Such a frame carries no information
//!    about the part, whatever the scores say: `review`.
//! 2. No evidence either way: every class score within a tolerance of the
//!    others (an all-white frame under inverted scaling scores exactly 0 for
//!    every class): `review` (`no_evidence`).
//! 3. The operating point: the decided class's probability below
//!    `min_probability`, or its score's lead over the runner-up below
//!    `min_margin`: `review`.
//! 4. Otherwise `ng` when the decided class is one of `reject_classes`,
//!    else `ok`.

use serde::{Deserialize, Serialize};

use crate::config::{DecisionConfig, HealthConfig};
use crate::decision::Decision;

/// What the line does with the part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Passes.
    Ok,
    /// Rejected: the decided class is a reject class.
    Ng,
    /// A person must look: the frame or the decision is not to be trusted.
    Review,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Ok, Verdict::Ng, Verdict::Review];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Ng => "ng",
            Verdict::Review => "review",
        }
    }
}

/// A frame-health check that sent a frame to review.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Dark,
    Saturated,
    Flat,
    Frozen,
    NoEvidence,
}

impl Health {
    pub const ALL: [Health; 5] = [
        Health::Dark,
        Health::Saturated,
        Health::Flat,
        Health::Frozen,
        Health::NoEvidence,
    ];

    /// The check's name, as in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Health::Dark => "dark",
            Health::Saturated => "saturated",
            Health::Flat => "flat",
            Health::Frozen => "frozen",
            Health::NoEvidence => "no_evidence",
        }
    }
}

/// A verdict with its reason, and the health check behind it if one failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub verdict: Verdict,
    pub reason: String,
    pub health: Option<Health>,
}

/// What the health checks need of a frame's 8-bit input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameStats {
    /// Share of values at 0.
    pub dark: f64,
    /// Share of values at 255.
    pub saturated: f64,
    /// Standard deviation of the values (0-255).
    pub contrast: f64,
    /// A hash of the values, to recognise a repeated frame.
    pub hash: u64,
}

impl FrameStats {
    /// The statistics of `bytes` (every channel of the model's input).
    pub fn of(bytes: &[u8]) -> FrameStats {
        let mut hist = [0u64; 256];
        for &b in bytes {
            hist[b as usize] += 1;
        }
        let n = bytes.len().max(1) as f64;
        let (mut sum, mut sq) = (0f64, 0f64);
        for (v, &c) in hist.iter().enumerate() {
            let (v, c) = (v as f64, c as f64);
            sum += v * c;
            sq += v * v * c;
        }
        let mean = sum / n;
        FrameStats {
            dark: hist[0] as f64 / n,
            saturated: hist[255] as f64 / n,
            contrast: (sq / n - mean * mean).max(0.0).sqrt(),
            hash: fnv1a(bytes),
        }
    }
}

/// FNV-1a, 64 bits: cheap, and enough to tell a repeated buffer from a new
/// exposure (sensor noise changes every frame of a live camera).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Counts consecutive identical frames of one source.
#[derive(Clone, Debug, Default)]
pub struct Repeats {
    last: Option<u64>,
    run: u64,
}

impl Repeats {
    /// Frames in the current run of identical ones, this one included (1
    /// for a frame unlike the one before).
    pub fn see(&mut self, hash: u64) -> u64 {
        self.run = if self.last == Some(hash) {
            self.run + 1
        } else {
            1
        };
        self.last = Some(hash);
        self.run
    }
}

/// The first health check `stats` (with `run` identical frames in a row)
/// fails, with its reason.
fn unhealthy(h: &HealthConfig, stats: &FrameStats, run: u64) -> Option<(Health, String)> {
    let pct = |v: f64| format!("{:.0}%", v * 100.0);
    if stats.dark > h.max_dark_share {
        let why = format!("frame dark: {} of pixels at 0", pct(stats.dark));
        return Some((Health::Dark, why));
    }
    if stats.saturated > h.max_saturated_share {
        let why = format!("frame saturated: {} of pixels at 255", pct(stats.saturated));
        return Some((Health::Saturated, why));
    }
    if stats.contrast < h.min_contrast {
        let why = format!(
            "frame flat: contrast {:.2} below {}",
            stats.contrast, h.min_contrast
        );
        return Some((Health::Flat, why));
    }
    if h.frozen_frames > 0 && run >= h.frozen_frames {
        let why = format!("source frozen: the same frame {run} times in a row");
        return Some((Health::Frozen, why));
    }
    None
}

/// The verdict on `d` for a frame with `stats`, `run` identical frames in a
/// row (see [`Repeats`]).
pub fn judge(cfg: &DecisionConfig, stats: &FrameStats, run: u64, d: &Decision) -> Judged {
    let review = |health, reason| Judged {
        verdict: Verdict::Review,
        reason,
        health,
    };
    if let Some((h, why)) = unhealthy(&cfg.health, stats, run) {
        return review(Some(h), why);
    }
    let lo = d.scores.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = d.scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if d.scores.len() > 1 && ((hi - lo) as f64) <= cfg.health.evidence_tolerance {
        let why = format!(
            "no evidence: every score within {}",
            cfg.health.evidence_tolerance
        );
        return review(Some(Health::NoEvidence), why);
    }
    let p = d.probabilities.get(d.class_index).copied().unwrap_or(0.0) as f64;
    if p < cfg.min_probability {
        // Rounded down, so that a probability just short of the threshold
        // never reads as the threshold itself (p=0.7996 is "0.79 below 0.8").
        let shown = (p * 100.0).floor() / 100.0;
        let why = format!(
            "class {} p={shown:.2} below {}",
            d.class, cfg.min_probability
        );
        return review(None, why);
    }
    if (d.margin as f64) < cfg.min_margin {
        let why = format!(
            "class {} margin {:.3} below {}",
            d.class, d.margin, cfg.min_margin
        );
        return review(None, why);
    }
    let verdict = match cfg.reject_classes.contains(&d.class) {
        true => Verdict::Ng,
        false => Verdict::Ok,
    };
    Judged {
        verdict,
        reason: format!("class {} p={p:.2}", d.class),
        health: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The classes of the rules below (also used by the sweep's tests).
    pub(crate) fn classes() -> Vec<String> {
        vec!["crack".into(), "ok".into()]
    }

    /// crack rejects, review below p=0.8, default health checks.
    pub(crate) fn cfg() -> DecisionConfig {
        DecisionConfig {
            reject_classes: vec!["crack".into()],
            min_probability: 0.8,
            min_margin: 0.0,
            health: HealthConfig::default(),
        }
    }

    /// Texture with every value from 10 to 200: healthy.
    fn textured() -> Vec<u8> {
        (0..64 * 64).map(|i| (10 + (i * 7) % 191) as u8).collect()
    }

    fn judged(cfg: &DecisionConfig, bytes: &[u8], run: u64, scores: Vec<f32>) -> Judged {
        let d = Decision::from_scores(&classes(), scores);
        judge(cfg, &FrameStats::of(bytes), run, &d)
    }

    #[test]
    fn confident_decisions_are_ng_for_reject_classes_and_ok_otherwise() {
        let j = judged(&cfg(), &textured(), 1, vec![3.0, 0.0]);
        assert_eq!(j.verdict, Verdict::Ng);
        assert_eq!(j.reason, "class crack p=0.95");
        let j = judged(&cfg(), &textured(), 1, vec![0.0, 3.0]);
        assert_eq!((j.verdict, j.health), (Verdict::Ok, None));
        assert_eq!(j.reason, "class ok p=0.95");
    }

    #[test]
    fn an_unsure_decision_goes_to_review_below_the_probability_or_margin() {
        let j = judged(&cfg(), &textured(), 1, vec![0.5, 0.0]);
        assert_eq!(j.verdict, Verdict::Review);
        assert_eq!(j.reason, "class crack p=0.62 below 0.8");
        // Just short of the threshold: rounded down, never shown as 0.80.
        // softmax([1.3854, 0]) = 0.79985...
        let j = judged(&cfg(), &textured(), 1, vec![1.3854, 0.0]);
        assert_eq!(j.reason, "class crack p=0.79 below 0.8");
        let mut c = cfg();
        c.min_probability = 0.0;
        c.min_margin = 1.0;
        let j = judged(&c, &textured(), 1, vec![0.5, 0.0]);
        assert_eq!(j.verdict, Verdict::Review);
        assert_eq!(j.reason, "class crack margin 0.500 below 1");
        // The defaults decide as argmax did: no band.
        let j = judged(&DecisionConfig::default(), &textured(), 1, vec![0.01, 0.0]);
        assert_eq!(j.verdict, Verdict::Ok);
    }

    #[test]
    fn dark_saturated_and_flat_frames_go_to_review_whatever_the_scores() {
        let mut dark = textured();
        dark[..64 * 62].fill(0);
        let j = judged(&cfg(), &dark, 1, vec![5.0, 0.0]);
        assert_eq!((j.verdict, j.health), (Verdict::Review, Some(Health::Dark)));
        assert_eq!(j.reason, "frame dark: 97% of pixels at 0");
        let white = vec![255u8; 64 * 64];
        let j = judged(&cfg(), &white, 1, vec![5.0, 0.0]);
        assert_eq!(j.health, Some(Health::Saturated));
        assert_eq!(j.reason, "frame saturated: 100% of pixels at 255");
        let grey: Vec<u8> = (0..64 * 64).map(|i| 120 + (i % 2) as u8).collect();
        let j = judged(&cfg(), &grey, 1, vec![5.0, 0.0]);
        assert_eq!(j.health, Some(Health::Flat));
        assert_eq!(j.reason, "frame flat: contrast 0.50 below 1");
        // Each check can be turned off.
        let mut c = cfg();
        c.health.max_dark_share = 1.0;
        c.health.max_saturated_share = 1.0;
        c.health.min_contrast = 0.0;
        for f in [&dark, &white, &grey] {
            assert_eq!(judged(&c, f, 1, vec![5.0, 0.0]).verdict, Verdict::Ng);
        }
    }

    #[test]
    fn a_frozen_source_is_recognised_from_the_nth_identical_frame() {
        let mut r = Repeats::default();
        let a = FrameStats::of(&textured()).hash;
        let mut other = textured();
        other[100] ^= 1;
        let b = FrameStats::of(&other).hash;
        assert_ne!(a, b, "one changed value changes the hash");
        let runs: Vec<u64> = [a, a, a, b, a, a].iter().map(|&h| r.see(h)).collect();
        assert_eq!(runs, vec![1, 2, 3, 1, 1, 2]);
        let j = judged(&cfg(), &textured(), 3, vec![5.0, 0.0]);
        assert_eq!(j.health, Some(Health::Frozen));
        assert_eq!(j.reason, "source frozen: the same frame 3 times in a row");
        assert_eq!(judged(&cfg(), &textured(), 2, vec![5.0, 0.0]).health, None);
        let mut c = cfg();
        c.health.frozen_frames = 0;
        assert_eq!(judged(&c, &textured(), 99, vec![5.0, 0.0]).health, None);
    }

    #[test]
    fn equal_scores_are_no_evidence_and_never_pick_a_class() {
        let j = judged(&cfg(), &textured(), 1, vec![0.0, 0.0]);
        assert_eq!(
            (j.verdict, j.health),
            (Verdict::Review, Some(Health::NoEvidence))
        );
        // Even with the operating point off and the first class a reject.
        let mut c = cfg();
        c.min_probability = 0.0;
        assert_eq!(
            judged(&c, &textured(), 1, vec![2.0, 2.0]).verdict,
            Verdict::Review
        );
    }

    #[test]
    fn frame_stats_count_shares_and_contrast() {
        let s = FrameStats::of(&[0, 0, 255, 255]);
        assert_eq!((s.dark, s.saturated), (0.5, 0.5));
        assert!((s.contrast - 127.5).abs() < 1e-9);
        assert_eq!(FrameStats::of(&[7; 10]).contrast, 0.0);
    }
}
