//! The model the daemon serves, with everything that goes with it: the
//! reference for check (b), the preprocessing and the sink settings. A SIGHUP
//! reload builds a new [`Bundle`] and swaps it in between two frames; every
//! decision carries the `Arc<Bundle>` that made it, so its log line, checks
//! and evidence always match the model that decided.

use candle_core::{Device, Tensor};

use crate::config::{ChecksConfig, DecisionConfig, EvidenceConfig, Loaded};
use crate::error::{Error, Result};
use crate::model::score::gcm_score;
use crate::model::tta::{averaged_cwm, Tta};
use crate::model::{Gcm, Predictor};
use crate::preprocess::PreprocessSpec;

/// The path check (b) compares the served scores with: the unfolded network
/// (BatchNorm as its own layer) on the CPU, a different code path from the
/// served one (folded BatchNorm, the engine's planned executor, maybe a GPU).
#[derive(Clone, Debug)]
pub struct Reference(pub Box<Gcm>, pub Tta);

impl Reference {
    pub fn describe(&self) -> &'static str {
        "the unfolded network on the CPU"
    }

    /// Scores `[N]` for one raw input `[1, D, R, C]` in [0, 1] (on the CPU),
    /// averaged over the same symmetries as the served model's.
    pub fn scores(&self, raw: &Tensor) -> Result<Vec<f32>> {
        let out = self.0.forward_t(raw, false)?;
        let s = match self.1 {
            Tta::None => out.scores,
            tta => {
                let cwm = averaged_cwm(tta, raw, |t| Ok(self.0.forward_t(t, false)?.cwm))?;
                gcm_score(&cwm, &out.scaled)?
            }
        };
        Ok(s.to_device(&Device::Cpu)?.get(0)?.to_vec1::<f32>()?)
    }
}

/// Model, reference and per-frame settings, swapped as one on reload.
#[derive(Debug)]
pub struct Bundle {
    pub spec: String,
    pub device_name: String,
    pub predictor: Predictor,
    pub reference: Reference,
    pub prep: PreprocessSpec,
    pub evidence: EvidenceConfig,
    pub checks: ChecksConfig,
    pub decision: DecisionConfig,
}

impl Bundle {
    /// Opens the device and the model named by the config and checks the
    /// config against the model.
    pub fn open(loaded: &Loaded) -> Result<Bundle> {
        let cfg = &loaded.config;
        let device = crate::device::open(&cfg.device)?;
        let spec = loaded.model_spec();
        let m = crate::model::bundled::open(&spec)?;
        let predictor = Predictor::from_loaded(&m, &device)?
            .with_tta(cfg.tta)
            .map_err(|e| Error::config(&loaded.origin, format!("tta: {e}")))?;
        let reference = Reference(Box::new(m.build(&Device::Cpu)?), cfg.tta);
        let mc = predictor.config();
        cfg.check_against_model(
            predictor.classes(),
            mc.input_channels,
            &loaded.origin,
            &loaded.text,
        )?;
        if cfg.decision.reject_classes.is_empty() {
            tracing::warn!(
                "decision.reject_classes is empty: no decision is ng, every confident one is ok \
                 (name the model's defect classes: {})",
                predictor.classes().join(", ")
            );
        }
        let prep = PreprocessSpec {
            roi: cfg.preprocess.roi,
            channels: mc.input_channels,
            rows: mc.input_rows,
            cols: mc.input_cols,
            scaling: mc.scaling.clone(),
        };
        Ok(Bundle {
            spec,
            device_name: cfg.device.clone(),
            predictor,
            reference,
            prep,
            evidence: cfg.evidence.clone(),
            checks: cfg.checks.clone(),
            decision: cfg.decision.clone(),
        })
    }

    /// The model id logged with every decision: the sha256 of the weights.
    pub fn model_id(&self) -> &str {
        &self.predictor.card.weights_sha256
    }

    pub fn describe(&self) -> String {
        let c = self.predictor.config();
        format!(
            "model {} ({}; {}x{}x{}; classes {}{}) on {}",
            self.spec,
            self.predictor.card.short_id(),
            c.input_channels,
            c.input_rows,
            c.input_cols,
            c.classes.join(", "),
            match self.predictor.tta() {
                crate::model::tta::Tta::None => String::new(),
                t => format!("; tta {}", t.name()),
            },
            self.device_name
        )
    }
}

/// A tiny model (8x8 grey, classes a, b, c) saved in `dir`, opened as a bundle.
#[cfg(test)]
pub(crate) fn test_bundle(dir: &std::path::Path) -> Bundle {
    use crate::config::DaemonConfig;
    use crate::model::checkpoint;
    use crate::model::gcm::varmap_tensors;
    use crate::model::ModelConfig;
    let mut cfg = ModelConfig::table3(8, 8, 1, vec!["a".into(), "b".into(), "c".into()]);
    cfg.encoder_widths = vec![2, 3, 4];
    let (_, vm) = Gcm::init(&cfg, 5, &Device::Cpu).unwrap();
    checkpoint::save(dir, &varmap_tensors(&vm), checkpoint::new_card(cfg)).unwrap();
    let text = format!("model: {}\nsource:\n  synthetic: {{}}\n", dir.display());
    let config = DaemonConfig::from_yaml(&text, std::path::Path::new("t.yaml")).unwrap();
    let loaded = Loaded {
        origin: "t.yaml".into(),
        text,
        config,
    };
    Bundle::open(&loaded).unwrap()
}
