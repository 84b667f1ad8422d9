//! How fast this machine runs a model (`gcm-inspect bench`).
//!
//! Like TensorRT's `trtexec`: warm-up, then a timed loop of pure inference
//! (BatchNorm folded, as the daemon runs it) on the model's input size with
//! random input, reporting images/s and per-batch latency percentiles.
//! `--mode train` times one training step instead (forward in training mode,
//! softmax cross-entropy, backward, SGD update), the path `train` runs.
//!
//! The baseline CNN (`train --arch cnn`) is timed the same way (its
//! forward applies BatchNorm from the running statistics; it has no folded
//! path). `--method NAME` times an evidence method per batch instead: the
//! forward that decides each image's class, then that class's map
//! (`crate::methods`), on the CPU, where the methods run. `--method gcm` on
//! a GCM is its forward plus the decided class's CCM, the reference the
//! CNN's methods are set against.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::Optimizer;
use serde::Serialize;

use crate::engine;
use crate::error::{Error, Result};
use crate::methods::Method;
use crate::model::config::{Arch, ModelConfig};
use crate::model::gcm::{varmap_tensors, Gcm};
use crate::model::tta::Tta;
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
    /// An evidence method to time (inference only, CPU).
    pub method: Option<Method>,
    /// The layer CAV analyses.
    pub cav_layer: usize,
    /// Test-time symmetry averaging of a GCM's inference, as the daemon's
    /// `tta:` runs it (each image's K copies in one batch).
    pub tta: Tta,
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
    /// `gcm` or `cnn`.
    pub arch: &'static str,
    /// The evidence method timed, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'static str>,
    /// The test-time symmetry averaging timed (`none`, `flips`, `d4`).
    pub tta: &'static str,
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
    let arch = cfg.arch;
    if o.tta != Tta::None && (o.mode == Mode::Train || arch != Arch::Gcm) {
        return Err(Error::Usage(format!(
            "--tta {}: symmetry averaging is timed in a GCM's inference; {}",
            o.tta.name(),
            if arch != Arch::Gcm {
                "this is the baseline CNN"
            } else {
                "drop --mode train"
            }
        )));
    }
    if let Some(m) = o.method {
        if o.mode == Mode::Train {
            return Err(Error::Usage(format!(
                "--method {}: evidence methods are timed in inference; drop --mode train",
                m.name()
            )));
        }
        if !dev.is_cpu() {
            return Err(Error::Usage(format!(
                "--method {}: the evidence methods run on the CPU; use --device cpu",
                m.name()
            )));
        }
        let fits = match m {
            Method::All => false,
            Method::Gcm => arch == Arch::Gcm,
            _ => arch == Arch::Cnn,
        };
        if !fits {
            return Err(Error::Usage(format!(
                "--method {}: {} is a {} model; gcm times a GCM's forward and CCM, the others run on the baseline CNN (train --arch cnn), one method per run",
                m.name(),
                loaded.dir.display(),
                arch.name()
            )));
        }
    }
    let mut step: Step = match (o.mode, arch) {
        (Mode::Infer, Arch::Gcm) => {
            let p = Predictor::from_loaded(&loaded, dev)?.with_tta(o.tta)?;
            let ccm = o.method == Some(Method::Gcm);
            Box::new(move || {
                let out = p.forward(Input::Raw(&x))?;
                if ccm {
                    let classes: Vec<usize> = out
                        .scores
                        .argmax(D::Minus1)?
                        .to_vec1::<u32>()?
                        .into_iter()
                        .map(|c| c as usize)
                        .collect();
                    let cwm = crate::methods::pick_classes(&out.cwm, &classes)?;
                    out.scaled
                        .broadcast_mul(&cwm.unsqueeze(1)?)?
                        .sum(1)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                }
                // Reading the scores back waits for the device.
                out.scores.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
                Ok(())
            })
        }
        (Mode::Infer, Arch::Cnn) => {
            let net = loaded.build_cnn(dev)?;
            let method = o.method;
            let layer = o.cav_layer;
            if layer > net.encoder().len() {
                return Err(Error::Usage(format!(
                    "--cav-layer {layer}: the model has {} encoder layers",
                    net.encoder().len()
                )));
            }
            Box::new(move || {
                let out = net.forward_t(&x, false)?;
                let scores = out.scores.to_device(&Device::Cpu)?;
                if let Some(m) = method {
                    let classes: Vec<usize> = scores
                        .argmax(D::Minus1)?
                        .to_vec1::<u32>()?
                        .into_iter()
                        .map(|c| c as usize)
                        .collect();
                    crate::methods::method_map(&net, &out.scaled, &classes, m, layer)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                } else {
                    scores.to_vec2::<f32>()?;
                }
                Ok(())
            })
        }
        (Mode::Train, _) => train_step(&loaded, o.batch, dev, x)?,
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
        arch: arch.name(),
        method: o.method.map(Method::name),
        tta: o.tta.name(),
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

/// Writes a randomly initialised Table 3 GCM or Table 6 CNN (seed 0) to
/// `dir`, for benchmarking before any training.
pub fn write_random_model(
    dir: &Path,
    arch: Arch,
    side: usize,
    channels: usize,
    classes: &str,
) -> Result<()> {
    let classes: Vec<String> = classes
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let cfg = ModelConfig::default_for(arch, side, side, channels, classes);
    cfg.validate()
        .map_err(|e| Error::Usage(format!("--init: {e}")))?;
    let vm = crate::model::gcm::init_varmap(&cfg, 0, &Device::Cpu)?;
    checkpoint::save(dir, &varmap_tensors(&vm), checkpoint::new_card(cfg))?;
    Ok(())
}

type Step = Box<dyn FnMut() -> Result<()>>;

/// A network's scores for a batch.
type ScoresFn = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

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
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, dev);
    // The scores of a training-mode forward, GCM or CNN.
    let forward: ScoresFn = match cfg.arch {
        Arch::Gcm => {
            let net = Gcm::new(cfg, vb)?;
            Box::new(move |x| Ok(net.forward_t(x, true)?.scores))
        }
        Arch::Cnn => {
            let net = crate::model::Cnn::new(cfg, vb)?;
            Box::new(move |x| Ok(net.forward_t(x, true)?.scores))
        }
    };
    let vars: Vec<candle_core::Var> = crate::model::gcm::trainable(cfg, &vm)
        .into_iter()
        .map(|t| t.1)
        .collect();
    let mut sgd = candle_nn::SGD::new(vars, 0.01)?;
    let n = cfg.num_classes() as u32;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % n).collect();
    let labels = Tensor::from_vec(labels, batch, dev)?;
    Ok(Box::new(move || {
        let scores = forward(&x)?;
        let logp = candle_nn::ops::log_softmax(&scores, D::Minus1)?;
        let loss = candle_nn::loss::nll(&logp, &labels)?;
        sgd.backward_step(&loss)?;
        loss.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
        Ok(())
    }))
}
