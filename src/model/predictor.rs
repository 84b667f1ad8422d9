//! Loading a model directory for inference and turning scores into decisions.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::checkpoint::{self, ModelCard};
use super::config::ModelConfig;
use super::folded::FoldedGcm;
use super::gcm::GcmOutput;
use crate::error::{Error, Result};

/// A model ready for inference (BatchNorm folded) on one device.
#[derive(Clone, Debug)]
pub struct Predictor {
    pub dir: PathBuf,
    pub card: ModelCard,
    net: FoldedGcm,
    device: Device,
}

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

impl Predictor {
    /// Wraps an already loaded model.
    pub fn from_loaded(m: &super::checkpoint::LoadedModel, device: &Device) -> Result<Self> {
        let net = m.build(device)?;
        let net = FoldedGcm::new(&net).map_err(|e| Error::model(&m.dir, e.to_string()))?;
        Ok(Predictor {
            dir: m.dir.clone(),
            card: m.card.clone(),
            net,
            device: device.clone(),
        })
    }

    /// Opens a model by its spec: a model directory, or `builtin:demo` for the
    /// demo model bundled in the binary (see `weights/README.md`).
    pub fn open(spec: &str, device: &Device) -> Result<Self> {
        Predictor::from_loaded(&super::bundled::open(spec)?, device)
    }

    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Predictor::from_loaded(&checkpoint::load(dir)?, device)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.card.model
    }

    pub fn classes(&self) -> &[String] {
        &self.card.model.classes
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn network(&self) -> &FoldedGcm {
        &self.net
    }

    /// Runs the network on raw input `[B, D, R, C]` in [0, 1].
    pub fn forward(&self, raw: &Tensor) -> Result<GcmOutput> {
        let raw = raw.to_device(&self.device)?;
        Ok(self.net.forward(&raw)?)
    }

    /// Decisions for every image of a batch of scores `[B, N]`.
    pub fn decide(&self, scores: &Tensor) -> Result<Vec<Decision>> {
        let rows = scores.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|s| decision_from_scores(self.classes(), s))
            .collect())
    }
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

pub fn decision_from_scores(classes: &[String], scores: Vec<f32>) -> Decision {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_picks_argmax_with_margin() {
        let c = vec!["a".to_string(), "b".into(), "c".into()];
        let d = decision_from_scores(&c, vec![0.1, 0.7, 0.4]);
        assert_eq!((d.class_index, d.class.as_str()), (1, "b"));
        assert!((d.margin - 0.3).abs() < 1e-6);
        assert!((d.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(d.probabilities[1] > d.probabilities[2]);
    }
}
