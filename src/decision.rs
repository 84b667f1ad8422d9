//! A decision: the class the scores pick, with its probabilities and margin.

use serde::Serialize;

/// One image's decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Index of the decided class (argmax of the scores).
    pub class_index: usize,
    /// Name of the decided class.
    pub class: String,
    /// Class scores (mean of each CCM), in class order.
    pub scores: Vec<f32>,
    /// Softmax of the scores.
    pub probabilities: Vec<f32>,
    /// Decided score minus the runner-up's (0 with one class).
    pub margin: f32,
}

/// Softmax of scores, computed stably.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = scores.iter().map(|&s| ((s - m) as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| (v / z) as f32).collect()
}

/// Index of the largest score (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

impl Decision {
    /// The decision `scores` (in the order of `classes`) make.
    pub fn from_scores(classes: &[String], scores: Vec<f32>) -> Decision {
        let k = argmax(&scores);
        let runner_up = scores
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != k)
            .map(|(_, &s)| s)
            .fold(f32::NEG_INFINITY, f32::max);
        let margin = if runner_up.is_finite() {
            scores[k] - runner_up
        } else {
            0.0
        };
        Decision {
            class_index: k,
            class: classes[k].clone(),
            probabilities: softmax(&scores),
            scores,
            margin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_picks_argmax_with_margin() {
        let c = vec!["a".to_string(), "b".into(), "c".into()];
        let d = Decision::from_scores(&c, vec![0.1, 0.7, 0.4]);
        assert_eq!((d.class_index, d.class.as_str()), (1, "b"));
        assert!((d.margin - 0.3).abs() < 1e-6);
        assert!((d.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(d.probabilities[1] > d.probabilities[2]);
    }
}
