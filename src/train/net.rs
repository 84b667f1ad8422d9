//! The network a run trains: the GCM, or the baseline CNN of the paper's
//! Table 6 (`model: {arch: cnn}` or `train --arch cnn`). Both are built from
//! the same variables and trained by the same loop; only the options that
//! work on the GCM's class weight maps (`topk_loss`, `head_dropout`) are
//! refused for the CNN.

use candle_core::{Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::config::TrainConfig;
use crate::error::{Error, Result as AppResult};
use crate::model::{Arch, Cnn, CnnOutput, Gcm, GcmOutput, ModelConfig};

pub(super) enum Net {
    Gcm(Gcm),
    Cnn(Cnn),
}

/// One training forward pass: the scores, and for the GCM its maps
/// (`(cwm, scaled input)`) for the losses that use them.
pub(super) struct Forward {
    pub scores: Tensor,
    pub maps: Option<(Tensor, Tensor)>,
}

impl From<GcmOutput> for Forward {
    fn from(o: GcmOutput) -> Self {
        Forward {
            scores: o.scores,
            maps: Some((o.cwm, o.scaled)),
        }
    }
}

impl From<CnnOutput> for Forward {
    fn from(o: CnnOutput) -> Self {
        Forward {
            scores: o.scores,
            maps: None,
        }
    }
}

impl Net {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg.arch {
            Arch::Gcm => Net::Gcm(Gcm::new(cfg, vb)?),
            Arch::Cnn => Net::Cnn(Cnn::new(cfg, vb)?),
        })
    }

    /// Refuses training options the network cannot take.
    pub fn check(&self, cfg: &TrainConfig) -> AppResult<()> {
        if let Net::Cnn(_) = self {
            if cfg.topk_loss.is_some() {
                return Err(Error::Usage(
                    "topk_loss: needs the GCM's class weight maps; the cnn has none".into(),
                ));
            }
            if cfg.head_dropout > 0.0 {
                return Err(Error::Usage(
                    "head_dropout: applies before the GCM's head; the cnn has none".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn trainable(&self, varmap: &VarMap) -> Vec<(String, Var, bool)> {
        match self {
            Net::Gcm(n) => n.trainable(varmap),
            Net::Cnn(n) => n.trainable(varmap),
        }
    }

    pub fn num_parameters(&self) -> usize {
        match self {
            Net::Gcm(n) => n.num_parameters(),
            Net::Cnn(n) => n.num_parameters(),
        }
    }
}
