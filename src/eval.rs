//! Classification metrics and the GCM paper's "decline ratio" (Table 8).
//!
//! Decline protocol: (A) the network's accuracy; (B) the accuracy of
//! classifying with the sum of each class's *map* as its score; decline =
//! (A - B) / A. Maps: (i) `raw` the CWM as it is, (ii) `abs` its absolute
//! value, (iv) `ccm` the CCM (CWM x scaled input). For the GCM the CCM's sum is
//! `R*C*D` times the score, so (iv) declines by 0 up to float ties: the
//! evidence *is* the decision.

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use serde::Serialize;

use crate::decision::argmax;
use crate::error::Result;
use crate::model::GcmOutput;

/// The map kinds of the decline table that apply to the GCM.
pub const MAP_KINDS: [&str; 3] = ["raw", "abs", "ccm"];

/// Precision and recall of one class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub class: String,
    /// Images of this class.
    pub support: usize,
    /// Correct among those predicted as this class (NaN-free: 0 when none predicted).
    pub precision: f64,
    /// Correct among the images of this class.
    pub recall: f64,
}

/// One row of the decline table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeclineRow {
    /// Accuracy (0..1) when classifying by the map's sum.
    pub accuracy: f64,
    /// `(A - B) / A`.
    pub decline: f64,
}

/// What `eval` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub images: usize,
    /// Network accuracy A, 0..1.
    pub accuracy: f64,
    /// Mean cross-entropy of the scores.
    pub loss: f64,
    pub classes: Vec<String>,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Decline rows keyed by map kind (`raw`, `abs`, `ccm`).
    pub decline: BTreeMap<String, DeclineRow>,
}

/// Accumulates metrics over batches.
#[derive(Clone, Debug)]
pub struct Evaluator {
    classes: Vec<String>,
    confusion: Vec<Vec<usize>>,
    map_correct: [usize; 3],
    /// Whether any batch came with maps (the decline rows need them).
    maps_seen: bool,
    loss_sum: f64,
    n: usize,
}

impl Evaluator {
    pub fn new(classes: &[String]) -> Self {
        let n = classes.len();
        Evaluator {
            classes: classes.to_vec(),
            confusion: vec![vec![0; n]; n],
            map_correct: [0; 3],
            maps_seen: false,
            loss_sum: 0.0,
            n: 0,
        }
    }

    /// Adds a batch: the network outputs and the true class of each image.
    pub fn add(&mut self, out: &GcmOutput, labels: &[usize]) -> Result<()> {
        self.maps_seen = true;
        let scores = out.scores.to_dtype(candle_core::DType::F32)?;
        let raw = out.cwm.sum((2, 3))?;
        let abs = out.cwm.abs()?.sum((2, 3))?;
        let logp = candle_nn::ops::log_softmax(&scores, D::Minus1)?.to_vec2::<f32>()?;
        let rows = [
            scores.to_vec2::<f32>()?,
            raw.to_vec2::<f32>()?,
            abs.to_vec2::<f32>()?,
        ];
        for (b, &t) in labels.iter().enumerate() {
            let pred = argmax(&rows[0][b]);
            self.confusion[t][pred] += 1;
            self.loss_sum -= logp[b][t] as f64;
            // (iv) ccm: the CCM's sum is R*C*D times the score, same argmax.
            let by_map = [argmax(&rows[1][b]), argmax(&rows[2][b]), pred];
            for (k, p) in by_map.into_iter().enumerate() {
                self.map_correct[k] += (p == t) as usize;
            }
        }
        self.n += labels.len();
        Ok(())
    }

    /// Adds a batch of a network without class maps (the baseline CNN):
    /// accuracy, loss and confusion only; the report then has no decline rows.
    pub fn add_scores(&mut self, scores: &Tensor, labels: &[usize]) -> Result<()> {
        let scores = scores.to_dtype(candle_core::DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&scores, D::Minus1)?.to_vec2::<f32>()?;
        let rows = scores.to_vec2::<f32>()?;
        for (b, &t) in labels.iter().enumerate() {
            self.confusion[t][argmax(&rows[b])] += 1;
            self.loss_sum -= logp[b][t] as f64;
        }
        self.n += labels.len();
        Ok(())
    }

    pub fn report(&self) -> EvalReport {
        let n = self.n.max(1) as f64;
        let correct: usize = (0..self.classes.len()).map(|j| self.confusion[j][j]).sum();
        let a = correct as f64 / n;
        let per_class = self
            .classes
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let support: usize = self.confusion[j].iter().sum();
                let predicted: usize = self.confusion.iter().map(|r| r[j]).sum();
                let tp = self.confusion[j][j] as f64;
                ClassMetrics {
                    class: c.clone(),
                    support,
                    precision: if predicted > 0 {
                        tp / predicted as f64
                    } else {
                        0.0
                    },
                    recall: if support > 0 {
                        tp / support as f64
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        let kinds: &[&str] = if self.maps_seen { &MAP_KINDS } else { &[] };
        let decline = kinds
            .iter()
            .zip(self.map_correct)
            .map(|(k, c)| {
                let b = c as f64 / n;
                let decline = if a > 0.0 { (a - b) / a } else { 0.0 };
                (
                    k.to_string(),
                    DeclineRow {
                        accuracy: b,
                        decline,
                    },
                )
            })
            .collect();
        EvalReport {
            images: self.n,
            accuracy: a,
            loss: self.loss_sum / n,
            classes: self.classes.clone(),
            per_class,
            confusion: self.confusion.clone(),
            decline,
        }
    }
}

/// Runs `forward` over `set` in batches of `batch`, handing each batch's
/// outputs and image indices to `each`.
pub fn for_batches(
    set: &crate::data::ImageSet,
    batch: usize,
    device: &candle_core::Device,
    forward: impl Fn(&Tensor) -> Result<GcmOutput>,
    mut each: impl FnMut(&GcmOutput, &[usize]) -> Result<()>,
) -> Result<()> {
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, _) = crate::train::data::batch(set, chunk, None, device)?;
        each(&forward(&x)?, chunk)?;
    }
    Ok(())
}

/// Runs `forward` over `set` in batches of `batch` and reports.
pub fn evaluate(
    set: &crate::data::ImageSet,
    classes: &[String],
    batch: usize,
    device: &candle_core::Device,
    forward: impl Fn(&Tensor) -> Result<GcmOutput>,
) -> Result<EvalReport> {
    let mut ev = Evaluator::new(classes);
    for_batches(set, batch, device, forward, |out, chunk| {
        let labels: Vec<usize> = chunk.iter().map(|&i| set.labels[i]).collect();
        ev.add(out, &labels)
    })?;
    Ok(ev.report())
}

/// [`evaluate`] for a network that gives only scores `[B, N]` (the
/// baseline CNN): no decline rows.
pub fn evaluate_scores(
    set: &crate::data::ImageSet,
    classes: &[String],
    batch: usize,
    device: &candle_core::Device,
    forward: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<EvalReport> {
    let mut ev = Evaluator::new(classes);
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, _) = crate::train::data::batch(set, chunk, None, device)?;
        let labels: Vec<usize> = chunk.iter().map(|&i| set.labels[i]).collect();
        ev.add_scores(&forward(&x)?, &labels)?;
    }
    Ok(ev.report())
}

impl EvalReport {
    /// A plain-text report for people.
    pub fn render(&self) -> String {
        let mut s = format!(
            "images    {}\naccuracy  {:.2}%\nloss      {:.4}\n\n",
            self.images,
            100.0 * self.accuracy,
            self.loss
        );
        let w = self
            .classes
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(5)
            .max(5);
        s += &format!(
            "{:w$}  {:>9}  {:>9}  {:>7}\n",
            "class", "precision", "recall", "images"
        );
        for c in &self.per_class {
            s += &format!(
                "{:w$}  {:>8.2}%  {:>8.2}%  {:>7}\n",
                c.class,
                100.0 * c.precision,
                100.0 * c.recall,
                c.support
            );
        }
        s += &format!("\nconfusion (rows: true, columns: predicted)\n{:w$}", "");
        for c in &self.classes {
            s += &format!("  {c:>w$}");
        }
        s += "\n";
        for (c, row) in self.classes.iter().zip(&self.confusion) {
            s += &format!("{c:w$}");
            for v in row {
                s += &format!("  {v:>w$}");
            }
            s += "\n";
        }
        if self.decline.is_empty() {
            return s;
        }
        s += "\ndecline ratio (GCM paper, Table 8): accuracy B when classifying by the map's sum\n";
        for (k, label) in [
            ("raw", "(i)  CWM"),
            ("abs", "(ii) |CWM|"),
            ("ccm", "(iv) CCM"),
        ] {
            if let Some(r) = self.decline.get(k) {
                s += &format!(
                    "{label:12} B {:>6.2}%  decline {:>6.2}%\n",
                    100.0 * r.accuracy,
                    100.0 * r.decline
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn out(scores: Vec<Vec<f32>>, cwm_sign: f32) -> GcmOutput {
        let b = scores.len();
        let n = scores[0].len();
        let flat: Vec<f32> = scores.iter().flatten().copied().collect();
        let s = Tensor::from_vec(flat.clone(), (b, n), &Device::Cpu).unwrap();
        // CWM constant per class = sign * score; 2x2 maps.
        let cwm: Vec<f32> = flat.iter().flat_map(|&v| [v * cwm_sign; 4]).collect();
        GcmOutput {
            scaled: Tensor::ones((b, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
            cwm: Tensor::from_vec(cwm, (b, n, 2, 2), &Device::Cpu).unwrap(),
            scores: s,
        }
    }

    #[test]
    fn confusion_precision_recall_and_decline() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let mut ev = Evaluator::new(&classes);
        // predictions: a, a, b, b ; truth: a, b, b, b
        let o = out(
            vec![
                vec![1.0, 0.0],
                vec![2.0, 1.0],
                vec![0.0, 1.0],
                vec![-1.0, 3.0],
            ],
            -1.0,
        );
        ev.add(&o, &[0, 1, 1, 1]).unwrap();
        let r = ev.report();
        assert_eq!(r.confusion, vec![vec![1, 0], vec![1, 2]]);
        assert!((r.accuracy - 0.75).abs() < 1e-12);
        assert!((r.per_class[0].precision - 0.5).abs() < 1e-12);
        assert!((r.per_class[1].recall - 2.0 / 3.0).abs() < 1e-12);
        // CCM classifies like the network.
        assert_eq!(r.decline["ccm"].decline, 0.0);
        // Negated CWMs invert every decision: B = 1 - A = 0.25.
        assert!((r.decline["raw"].accuracy - 0.25).abs() < 1e-12);
        assert!((r.decline["raw"].decline - (0.75 - 0.25) / 0.75).abs() < 1e-12);
    }
}
