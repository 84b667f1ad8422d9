//! ROC and precision-recall curves of a score, without a review band: a
//! frame is flagged as a reject when its score is at least the threshold.
//!
//! One point per distinct score, from the highest down, after a first point
//! at an infinite threshold (nothing flagged). Tied scores enter together,
//! so the trapezoid area under the ROC curve credits a tie between a
//! defective and a good frame with one half (the Mann-Whitney statistic).
//! Average precision is the step sum `sum (R_k - R_{k-1}) P_k` over the
//! points; precision with nothing flagged is 1.

/// One point: frames with a score at least `threshold` are flagged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub threshold: f64,
    /// Defective frames flagged.
    pub tp: usize,
    /// Good frames flagged.
    pub fp: usize,
}

/// The curve of `(score, defective)` pairs, with the totals of each side.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub points: Vec<Point>,
    pub defective: usize,
    pub good: usize,
}

fn share(a: usize, b: usize) -> f64 {
    match b {
        0 => 0.0,
        _ => a as f64 / b as f64,
    }
}

impl Point {
    pub fn tpr(&self, c: &Curve) -> f64 {
        share(self.tp, c.defective)
    }
    pub fn fpr(&self, c: &Curve) -> f64 {
        share(self.fp, c.good)
    }
    pub fn precision(&self) -> f64 {
        match self.tp + self.fp {
            0 => 1.0,
            n => self.tp as f64 / n as f64,
        }
    }
}

impl Curve {
    /// The curve of `frames` (score, whether defective).
    pub fn of(frames: &[(f64, bool)]) -> Curve {
        let mut sorted = frames.to_vec();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut points = vec![Point {
            threshold: f64::INFINITY,
            tp: 0,
            fp: 0,
        }];
        let (mut tp, mut fp) = (0, 0);
        for (i, &(score, defective)) in sorted.iter().enumerate() {
            match defective {
                true => tp += 1,
                false => fp += 1,
            }
            let last_of_tie = sorted.get(i + 1).is_none_or(|n| n.0 != score);
            if last_of_tie {
                points.push(Point {
                    threshold: score,
                    tp,
                    fp,
                });
            }
        }
        Curve {
            points,
            defective: tp,
            good: fp,
        }
    }

    /// Area under the ROC curve (trapezoids).
    pub fn roc_auc(&self) -> f64 {
        self.points
            .windows(2)
            .map(|w| {
                let dx = w[1].fpr(self) - w[0].fpr(self);
                dx * (w[1].tpr(self) + w[0].tpr(self)) / 2.0
            })
            .sum()
    }

    /// Average precision (step sum over the points).
    pub fn average_precision(&self) -> f64 {
        self.points
            .windows(2)
            .map(|w| (w[1].tpr(self) - w[0].tpr(self)) * w[1].precision())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    /// Scores 0.9 D, 0.8 G, 0.7 D, 0.6 D, 0.4 G, 0.2 G (D: defective).
    fn six() -> Curve {
        let f = [
            (0.6, true),
            (0.2, false),
            (0.9, true),
            (0.4, false),
            (0.8, false),
            (0.7, true),
        ];
        Curve::of(&f)
    }

    #[test]
    fn points_count_flagged_frames_from_the_highest_score_down() {
        let c = six();
        let tp_fp: Vec<(usize, usize)> = c.points.iter().map(|p| (p.tp, p.fp)).collect();
        let expected = [(0, 0), (1, 0), (1, 1), (2, 1), (3, 1), (3, 2), (3, 3)];
        assert_eq!(tp_fp, expected);
        let th: Vec<f64> = c.points.iter().map(|p| p.threshold).collect();
        assert_eq!(th, [f64::INFINITY, 0.9, 0.8, 0.7, 0.6, 0.4, 0.2]);
        assert_eq!((c.defective, c.good), (3, 3));
        // At 0.7: 2 of 3 defects, 1 of 3 good ones, precision 2/3.
        close(c.points[3].tpr(&c), 2.0 / 3.0);
        close(c.points[3].fpr(&c), 1.0 / 3.0);
        close(c.points[3].precision(), 2.0 / 3.0);
        close(c.points[0].precision(), 1.0);
    }

    #[test]
    fn auc_is_the_share_of_defect_good_pairs_ranked_right() {
        // Pairs ranked right: 0.9 beats 3 good, 0.7 and 0.6 beat 2 each: 7 of 9.
        close(six().roc_auc(), 7.0 / 9.0);
        // AP: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36.
        close(six().average_precision(), 29.0 / 36.0);
    }

    #[test]
    fn ties_enter_together_and_count_half() {
        let c = Curve::of(&[(0.5, true), (0.5, false)]);
        assert_eq!(c.points.len(), 2);
        close(c.roc_auc(), 0.5);
        close(c.average_precision(), 0.5);
        let perfect = Curve::of(&[(0.9, true), (0.8, true), (0.1, false)]);
        close(perfect.roc_auc(), 1.0);
        close(perfect.average_precision(), 1.0);
    }
}
