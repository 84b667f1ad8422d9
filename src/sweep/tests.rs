use super::*;
use crate::verdict::tests::{cfg, classes};

fn healthy(hash: u64) -> FrameStats {
    FrameStats {
        dark: 0.0,
        saturated: 0.0,
        contrast: 50.0,
        hash,
    }
}

/// A frame of true class `label` decided as `decided` with probability `p`
/// (two classes: scores `[logit, 0]` or `[0, logit]`).
fn frame(label: usize, decided: usize, p: f64) -> Scored {
    let logit = (p / (1.0 - p)).ln() as f32;
    let scores = match decided {
        0 => vec![logit, 0.0],
        _ => vec![0.0, logit],
    };
    let decision = Decision::from_scores(&classes(), scores);
    assert_eq!(decision.class_index, decided);
    Scored {
        path: format!("f{label}{decided}{p}.png").into(),
        label,
        decision,
        stats: healthy((p * 1e6) as u64),
    }
}

/// Three cracks (0.953 crack, 0.703 crack, 0.603 ok) and three good cells
/// (0.973 ok, 0.653 crack, 0.903 ok); off the 0.01 grid, so that no
/// probability's f32 rounding decides which side of a threshold it is on.
fn six() -> Vec<Scored> {
    vec![
        frame(0, 0, 0.953),
        frame(0, 0, 0.703),
        frame(0, 1, 0.603),
        frame(1, 1, 0.973),
        frame(1, 0, 0.653),
        frame(1, 1, 0.903),
    ]
}

fn counts_at(t: f64) -> Counts {
    let reject = reject_mask(&classes(), &cfg().reject_classes);
    row(&cfg(), &six(), &reject, t).counts
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

#[test]
fn without_a_band_a_miss_and_a_false_reject_pass_through() {
    let c = counts_at(0.0);
    assert_eq!((c.defect_ok, c.defect_ng, c.defect_review), (1, 2, 0));
    assert_eq!((c.good_ok, c.good_ng, c.good_review), (2, 1, 0));
    close(c.miss_rate(), 1.0 / 3.0);
    close(c.recall(), 2.0 / 3.0);
    close(c.precision(), 2.0 / 3.0);
    close(c.false_reject_rate(), 1.0 / 3.0);
    close(c.review_rate(), 0.0);
    close(c.cost(), 1.0 / 6.0);
}

#[test]
fn the_band_moves_unsure_frames_to_review_counted_apart() {
    // 0.62: the 0.603 miss goes to review; the 0.653 false reject stays.
    let c = counts_at(0.62);
    assert_eq!((c.defect_ok, c.defect_ng, c.defect_review), (0, 2, 1));
    assert_eq!((c.good_ng, c.good_review), (1, 0));
    close(c.miss_rate(), 0.0);
    close(c.recall(), 1.0);
    close(c.review_rate(), 1.0 / 6.0);
    close(c.cost(), 2.0 / 6.0);
    // 0.75: 0.603, 0.653 and 0.703 in review; the one ng is a crack.
    let c = counts_at(0.75);
    assert_eq!((c.defect_ng, c.defect_review, c.good_review), (1, 2, 1));
    close(c.precision(), 1.0);
    close(c.false_reject_rate(), 0.0);
    close(c.review_rate(), 0.5);
    // Above every probability: all in review, nothing rejected.
    let c = counts_at(0.99);
    assert_eq!(c.review(), 6);
    close(c.precision(), 1.0);
}

#[test]
fn thresholds_hold_the_grid_and_one_short_decimal_per_outcome() {
    let ts = thresholds(&six());
    assert!(ts.windows(2).all(|w| w[0] < w[1]));
    assert_eq!((ts[0], *ts.last().unwrap()), (0.0, 1.0));
    // The shortest decimals above each probability (up to the next one).
    for t in [0.61, 0.7, 0.8, 0.91, 0.96, 1.0] {
        assert!(ts.contains(&t), "{t} in {ts:?}");
    }
    assert_eq!(ts.len(), 101, "every outcome is already on the grid here");
    close(shortest_decimal(0.8, 0.95), 0.9);
    close(shortest_decimal(0.812, 0.8125), 0.8121);
    close(shortest_decimal(0.5, 0.5000000001), 0.5000000001);
}

#[test]
fn the_cheapest_threshold_within_the_miss_limit_is_chosen() {
    let reject = reject_mask(&classes(), &cfg().reject_classes);
    let rows = sweep(&cfg(), &six(), &reject);
    // Miss 0 first at 0.61 (cost 2/6); 0.66 to 0.70 cost 2/6 too: lowest wins.
    let c = choose(&rows, 0.01).unwrap();
    assert!(c.meets);
    close(c.row.threshold, 0.61);
    // A miss of 1/3 allowed: no band is cheapest (cost 1/6).
    let c = choose(&rows, 0.4).unwrap();
    close(c.row.threshold, 0.0);
    assert!(choose(&[], 0.01).is_none());
}

#[test]
fn without_a_threshold_meeting_the_limit_the_lowest_miss_is_flagged() {
    // A crack decided ok with p=1 (f32 rounds it) passes at every threshold.
    let mut set = six();
    set.push(Scored {
        decision: Decision::from_scores(&classes(), vec![0.0, 40.0]),
        ..frame(0, 1, 0.99)
    });
    let reject = reject_mask(&classes(), &cfg().reject_classes);
    let rows = sweep(&cfg(), &set, &reject);
    let c = choose(&rows, 0.01).unwrap();
    assert!(!c.meets);
    close(c.row.counts.miss_rate(), 0.25);
    close(c.row.threshold, 0.61);
}

#[test]
fn an_unhealthy_frame_is_in_review_at_every_threshold() {
    let mut set = six();
    set[0].stats.contrast = 0.0;
    let reject = reject_mask(&classes(), &cfg().reject_classes);
    for r in sweep(&cfg(), &set, &reject) {
        assert!(r.counts.defect_review >= 1, "{r:?}");
    }
}

#[test]
fn the_reject_score_sums_the_reject_classes() {
    let c: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let d = Decision::from_scores(&c, vec![0.0, 0.0, 0.0]);
    let s = reject_score(&d, &reject_mask(&c, &["a".into(), "c".into()]));
    assert!((s - 2.0 / 3.0).abs() < 1e-6);
}

/// The outcome on `set` with a 1% miss limit.
fn outcome(set: &[Scored]) -> write::Outcome {
    write::Outcome::of(cfg(), &classes(), set, 0.01)
}

#[test]
fn an_unreachable_limit_is_a_warning_and_the_snippet_holds_the_best_threshold() {
    let mut set = six();
    set.push(Scored {
        decision: Decision::from_scores(&classes(), vec![0.0, 40.0]),
        ..frame(0, 1, 0.99)
    });
    let o = outcome(&set);
    let s = write::summary(&o);
    let warning = "warning: no threshold keeps the miss rate at or below 1.00%: \
                   the lowest reachable is 25.00%";
    assert!(s.contains(warning), "{s}");
    assert!(
        s.contains("suggested min_probability 0.61: miss 25.00%"),
        "{s}"
    );
    let y: serde_yaml::Value = serde_yaml::from_str(&write::snippet(&o)).unwrap();
    assert_eq!(y["decision"]["min_probability"].as_f64(), Some(0.61));
    assert_eq!(y["decision"]["reject_classes"][0].as_str(), Some("crack"));
    assert!(!write::summary(&outcome(&six())).contains("warning"));
}

#[test]
fn predictions_give_each_image_its_verdict_at_the_suggested_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let o = outcome(&six());
    write::files(dir.path(), &o, &six()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("predictions.csv")).unwrap();
    let verdicts: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(6).unwrap())
        .collect();
    // At 0.61: the 0.603 miss in review, the 0.653 false reject still ng.
    assert_eq!(verdicts, ["ng", "ng", "review", "ok", "ng", "ok"]);
    for f in write::FILES {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
}
