//! How fast this machine runs a model (`gcm-inspect bench`).
//!
//! Like TensorRT's `trtexec`: warm-up, then a timed loop of pure inference
//! (BatchNorm folded, as the daemon runs it) on the model's input size with
//! random input, reporting images/s and per-batch latency percentiles.
//! `--mode train` times one training step instead (forward in training mode,
//! softmax cross-entropy, backward, SGD update), the path `train` runs.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::Optimizer;
use serde::Serialize;

use crate::engine;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::gcm::{varmap_tensors, Gcm};
use crate::model::{bundled, checkpoint, Input, Predictor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inference with folded BatchNorm (what the daemon runs).
    Infer,
    /// One training step: forward (train mode), cross-entropy, backward, SGD.
    Train,
}

/// What to time.
#[derive(Clone, Debug)]
pub struct Options {
    /// A model spec (directory or `builtin:demo`).
    pub model: String,
    pub mode: Mode,
    /// Images per batch (at least 1).
    pub batch: usize,
    /// Untimed warm-up iterations.
    pub warmup: usize,
    /// Timed iterations (at least this many, and at least `min_seconds`).
    pub iters: usize,
    pub min_seconds: f64,
    /// candle's stock CPU ops instead of the engine's kernels.
    pub stock_ops: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub device: String,
    pub ops: &'static str,
    pub isa: &'static str,
    pub threads: usize,
    pub batch: usize,
    /// `[channels, rows, cols]` of one input image.
    pub input: [usize; 3],
    pub iterations: usize,
    pub images_per_second: f64,
    /// Per-batch latency.
    pub latency_ms: Latency,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Times `o.mode` on `dev` (named `device` in the report).
pub fn run(o: &Options, dev: &Device, device: &str) -> Result<Report> {
    engine::set_stock_ops(o.stock_ops);
    let loaded = bundled::open(&o.model)?;
    let cfg = loaded.card.model.clone();
    let input = [cfg.input_channels, cfg.input_rows, cfg.input_cols];
    let x = Tensor::rand(0f32, 1.0, (o.batch, input[0], input[1], input[2]), dev)?;
    let mut step: Step = match o.mode {
        Mode::Infer => {
            let p = Predictor::from_loaded(&loaded, dev)?;
            Box::new(move || {
                let out = p.forward(Input::Raw(&x))?;
                // Reading the scores back waits for the device.
                out.scores.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
                Ok(())
            })
        }
        Mode::Train => train_step(&loaded, o.batch, dev, x)?,
    };
    for _ in 0..o.warmup {
        step()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < o.iters.max(1) || start.elapsed() < Duration::from_secs_f64(o.min_seconds) {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total_s: f64 = times.iter().sum::<f64>() / 1e3;
    let mut sorted = times.clone();
    sorted.sort_by(|p, q| p.total_cmp(q));
    Ok(Report {
        mode: o.mode,
        device: device.to_string(),
        ops: if o.stock_ops || !dev.is_cpu() {
            "candle-stock"
        } else {
            "engine"
        },
        isa: engine::Isa::detect().name(),
        threads: rayon::current_num_threads(),
        batch: o.batch,
        input,
        iterations: times.len(),
        images_per_second: (o.batch * times.len()) as f64 / total_s,
        latency_ms: Latency {
            mean: total_s * 1e3 / times.len() as f64,
            p50: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
            p99: percentile(&sorted, 0.99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        },
    })
}

/// Writes a randomly initialised Table 3 model (seed 0) to `dir`, for
/// benchmarking before any training.
pub fn write_random_model(dir: &Path, side: usize, channels: usize, classes: &str) -> Result<()> {
    let classes: Vec<String> = classes
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let cfg = ModelConfig::table3(side, side, channels, classes);
    cfg.validate()
        .map_err(|e| Error::Usage(format!("--init: {e}")))?;
    let (_, vm) = Gcm::init(&cfg, 0, &Device::Cpu)?;
    checkpoint::save(dir, &varmap_tensors(&vm), checkpoint::new_card(cfg))?;
    Ok(())
}

type Step = Box<dyn FnMut() -> Result<()>>;

/// One SGD training step on a fresh copy of the model's weights.
fn train_step(
    loaded: &checkpoint::LoadedModel,
    batch: usize,
    dev: &Device,
    x: Tensor,
) -> Result<Step> {
    let cfg = &loaded.card.model;
    let vm = candle_nn::VarMap::new();
    {
        let mut data = vm.data().lock().expect("fresh varmap");
        for (name, t) in &loaded.tensors {
            data.insert(
                name.clone(),
                candle_core::Var::from_tensor(&t.to_device(dev)?)?,
            );
        }
    }
    let net = Gcm::new(
        cfg,
        candle_nn::VarBuilder::from_varmap(&vm, DType::F32, dev),
    )?;
    let vars: Vec<candle_core::Var> = net.trainable(&vm).into_iter().map(|t| t.1).collect();
    let mut sgd = candle_nn::SGD::new(vars, 0.01)?;
    let n = cfg.num_classes() as u32;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % n).collect();
    let labels = Tensor::from_vec(labels, batch, dev)?;
    Ok(Box::new(move || {
        let out = net.forward_t(&x, true)?;
        let logp = candle_nn::ops::log_softmax(&out.scores, D::Minus1)?;
        let loss = candle_nn::loss::nll(&logp, &labels)?;
        sgd.backward_step(&loss)?;
        loss.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
        Ok(())
    }))
}
