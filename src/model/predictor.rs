//! Loading a model directory for inference and turning scores into decisions.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::checkpoint::{self, ModelCard};
use super::config::ModelConfig;
use super::folded::FoldedGcm;
use super::gcm::GcmOutput;
use super::tta::Tta;
use crate::decision::Decision;
use crate::error::{Error, Result};

/// What [`Predictor::forward`] is given.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Input in [0, 1] (bytes / 255): the model's scaling is applied first.
    Raw(&'a Tensor),
    /// Input the model's scaling has already been applied to (the daemon
    /// scales while it prepares a frame, see `preprocess::scale`).
    Scaled(&'a Tensor),
}

/// A model ready for inference (BatchNorm folded) on one device.
#[derive(Clone, Debug)]
pub struct Predictor {
    pub dir: PathBuf,
    pub card: ModelCard,
    net: FoldedGcm,
    device: Device,
    /// Test-time symmetry averaging ([`super::tta`]); none by default.
    tta: Tta,
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
            tta: Tta::None,
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

    /// Averages every later forward pass over the symmetries of `tta`;
    /// refused when the model's input cannot take them.
    pub fn with_tta(mut self, tta: Tta) -> Result<Self> {
        let c = self.config();
        tta.check(c.input_rows, c.input_cols)
            .map_err(|m| Error::model(&self.dir, m))?;
        if let Some(why) = tta.untrained(self.card.training.as_ref()) {
            tracing::warn!(model = %self.dir.display(), "{why}");
        }
        self.tta = tta;
        Ok(self)
    }

    pub fn tta(&self) -> Tta {
        self.tta
    }

    /// Runs the network on a batch `[B, D, R, C]` (moved to the model's
    /// device first): the one way inference enters the network.
    pub fn forward(&self, input: Input<'_>) -> Result<GcmOutput> {
        if self.tta == Tta::None {
            return Ok(match input {
                Input::Raw(x) => self.net.forward(&x.to_device(&self.device)?)?,
                Input::Scaled(x) => self.net.forward_scaled(x.to_device(&self.device)?)?,
            });
        }
        let scaled = match input {
            Input::Raw(x) => self.net.scale(&x.to_device(&self.device)?)?,
            Input::Scaled(x) => x.to_device(&self.device)?,
        };
        let cwm = super::tta::averaged_cwm(self.tta, &scaled, |t| self.net.cwm(t))?;
        let scores = super::score::gcm_score(&cwm, &scaled)?;
        Ok(GcmOutput {
            scaled,
            cwm,
            scores,
        })
    }

    /// Decisions for every image of a batch of scores `[B, N]`.
    pub fn decide(&self, scores: &Tensor) -> Result<Vec<Decision>> {
        let rows = scores.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|s| Decision::from_scores(self.classes(), s))
            .collect())
    }
}
