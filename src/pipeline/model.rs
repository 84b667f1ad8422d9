//! The model the daemon serves, with everything that goes with it: the
//! reference for check (b), the preprocessing and the sink settings. A SIGHUP
//! reload builds a new [`Bundle`] and swaps it in between two frames; every
//! decision carries the `Arc<Bundle>` that made it, so its log line, checks
//! and evidence always match the model that decided.

use candle_core::{Device, Tensor};

use super::preprocess::PrepSpec;
use crate::config::{ChecksConfig, EvidenceConfig, Loaded};
use crate::error::Result;
use crate::model::checkpoint;
use crate::model::{Gcm, Predictor};

/// The path check (b) compares the served scores with.
#[derive(Clone, Debug)]
pub enum Reference {
    /// The unfolded network (BatchNorm as its own layer, candle's reference
    /// convolutions) on the CPU: a different code path from the served one
    /// (folded BatchNorm, the engine's fused convolutions, maybe a GPU).
    Unfolded(Box<Gcm>),
    /// The served (folded) network again, on the CPU. Used for a bundled model,
    /// whose tensors are not reachable as a model directory; on a CPU-only box
    /// this compares the path with itself and catches nothing but
    /// nondeterminism, which the daemon says when it starts.
    Folded(Box<Predictor>),
}

impl Reference {
    pub fn describe(&self) -> &'static str {
        match self {
            Reference::Unfolded(_) => "unfolded network on the CPU",
            Reference::Folded(_) => "the served (folded) network on the CPU",
        }
    }

    /// Scores `[N]` for one raw input `[1, D, R, C]` in [0, 1] (on the CPU).
    pub fn scores(&self, raw: &Tensor) -> Result<Vec<f32>> {
        let s = match self {
            Reference::Unfolded(net) => net.forward_t(raw, false)?.scores,
            Reference::Folded(p) => p.forward(raw)?.scores,
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
    pub prep: PrepSpec,
    pub evidence: EvidenceConfig,
    pub checks: ChecksConfig,
}

impl Bundle {
    /// Opens the device and the model named by the config and checks the
    /// config against the model.
    pub fn open(loaded: &Loaded) -> Result<Bundle> {
        let cfg = &loaded.config;
        let device = crate::device::open(&cfg.device)?;
        let spec = loaded.model_spec();
        let (predictor, reference) = if spec.starts_with("builtin:") {
            let p = Predictor::open(&spec, &device)?;
            let r = Predictor::open(&spec, &Device::Cpu)?;
            (p, Reference::Folded(Box::new(r)))
        } else {
            let m = checkpoint::load(std::path::Path::new(&spec))?;
            let p = Predictor::from_loaded(&m, &device)?;
            (p, Reference::Unfolded(Box::new(m.build(&Device::Cpu)?)))
        };
        let mc = predictor.config();
        cfg.check_against_model(
            predictor.classes(),
            mc.input_channels,
            &loaded.origin,
            &loaded.text,
        )?;
        let prep = PrepSpec {
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
        })
    }

    /// The model id logged with every decision: the sha256 of the weights.
    pub fn model_id(&self) -> &str {
        &self.predictor.card.weights_sha256
    }

    pub fn describe(&self) -> String {
        let c = self.predictor.config();
        format!(
            "model {} ({}; {}x{}x{}; classes {}) on {}",
            self.spec,
            self.predictor.card.short_id(),
            c.input_channels,
            c.input_rows,
            c.input_cols,
            c.classes.join(", "),
            self.device_name
        )
    }
}

/// A tiny model (8x8 grey, classes a, b, c) saved in `dir`, opened as a bundle.
#[cfg(test)]
pub(crate) fn test_bundle(dir: &std::path::Path) -> Bundle {
    use crate::config::DaemonConfig;
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
