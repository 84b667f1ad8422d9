//! `gcm-inspect bench`: how fast this machine runs this model.
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

use crate::device;
use crate::engine;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::folded::FoldedGcm;
use crate::model::gcm::{varmap_tensors, Gcm};
use crate::model::{bundled, checkpoint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inference with folded BatchNorm (what the daemon runs).
    Infer,
    /// One training step: forward (train mode), cross-entropy, backward, SGD.
    Train,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory (model.json + model.safetensors), e.g. written by
    /// `train`, or `builtin:demo` for the model bundled in the binary.
    #[arg(long)]
    pub model: String,
    /// Images per batch.
    #[arg(long, default_value_t = 1, value_parser = super::positive)]
    pub batch: usize,
    /// CPU threads (default: all cores). Set before any work starts.
    #[arg(long, value_parser = super::positive)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// What to time.
    #[arg(long, value_enum, default_value_t = Mode::Infer)]
    pub mode: Mode,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed iterations (at least this many, and at least --min-seconds).
    #[arg(long, default_value_t = 20, value_parser = super::positive)]
    pub iters: usize,
    /// Keep timing until this many seconds have passed.
    #[arg(long, default_value_t = 2.0, value_parser = super::seconds)]
    pub min_seconds: f64,
    /// Run candle's stock CPU ops instead of the engine's kernels (for comparison).
    #[arg(long)]
    pub stock_ops: bool,
    /// First write a randomly initialised Table 3 model to --model (for
    /// benchmarking before any training), sized by --size, --channels, --classes.
    #[arg(long)]
    pub init: bool,
    /// With --init: input side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// With --init: input channels (1 grey, 3 RGB).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// With --init: class names, comma-separated.
    #[arg(long, default_value = "ok,defect")]
    pub classes: String,
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

pub fn run(a: Args) -> Result<()> {
    if a.batch == 0 {
        return Err(Error::Usage("--batch must be at least 1".into()));
    }
    if let Some(t) = a.threads {
        if t == 0 {
            return Err(Error::Usage("--threads must be at least 1".into()));
        }
        // candle's stock ops read RAYON_NUM_THREADS; the engine uses the global pool.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        // Fails only if the pool was already built, which nothing before this does.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    let dev = device::open(&a.device)?;
    if a.init {
        write_random_model(&a)?;
    }
    engine::set_stock_ops(a.stock_ops);
    let loaded = bundled::open(&a.model)?;
    let (card, net) = (loaded.card.clone(), loaded.build(&dev)?);
    let cfg = card.model.clone();
    let input = [cfg.input_channels, cfg.input_rows, cfg.input_cols];
    let x = Tensor::rand(0f32, 1.0, (a.batch, input[0], input[1], input[2]), &dev)?;
    let mut step: Box<dyn FnMut() -> Result<()>> = match a.mode {
        Mode::Infer => {
            let folded = FoldedGcm::new(&net)?;
            Box::new(move || {
                let out = folded.forward(&x)?;
                // Reading the scores back waits for the device.
                out.scores.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
                Ok(())
            })
        }
        Mode::Train => train_step(&a, &cfg, &dev, x)?,
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < a.iters.max(1) || start.elapsed() < Duration::from_secs_f64(a.min_seconds) {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total_s: f64 = times.iter().sum::<f64>() / 1e3;
    let mut sorted = times.clone();
    sorted.sort_by(|p, q| p.total_cmp(q));
    let report = Report {
        mode: a.mode,
        device: a.device.clone(),
        ops: if a.stock_ops || !dev.is_cpu() {
            "candle-stock"
        } else {
            "engine"
        },
        isa: engine::Isa::detect().name(),
        threads: rayon::current_num_threads(),
        batch: a.batch,
        input,
        iterations: times.len(),
        images_per_second: (a.batch * times.len()) as f64 / total_s,
        latency_ms: Latency {
            mean: total_s * 1e3 / times.len() as f64,
            p50: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
            p99: percentile(&sorted, 0.99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        },
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        );
    } else {
        let l = &report.latency_ms;
        println!(
            "{} {:?} on {} ({} ops, {}, {} threads), batch {}, input {}x{}x{}: {:.1} images/s; \
             latency per batch p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms ({} iterations)",
            a.model,
            report.mode,
            report.device,
            report.ops,
            report.isa,
            report.threads,
            report.batch,
            input[0],
            input[1],
            input[2],
            report.images_per_second,
            l.p50,
            l.p90,
            l.p99,
            report.iterations
        );
    }
    Ok(())
}

fn write_random_model(a: &Args) -> Result<()> {
    let classes: Vec<String> = a
        .classes
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let cfg = ModelConfig::table3(a.size, a.size, a.channels, classes);
    cfg.validate()
        .map_err(|e| Error::Usage(format!("--init: {e}")))?;
    let (_, vm) = Gcm::init(&cfg, 0, &Device::Cpu)?;
    if a.model.starts_with("builtin:") {
        return Err(Error::Usage(format!(
            "--init writes a model directory; {} is bundled in the binary",
            a.model
        )));
    }
    checkpoint::save(
        Path::new(&a.model),
        &varmap_tensors(&vm),
        checkpoint::new_card(cfg),
    )?;
    Ok(())
}

type Step = Box<dyn FnMut() -> Result<()>>;

/// One SGD training step on a fresh copy of the model's weights.
fn train_step(a: &Args, cfg: &ModelConfig, dev: &Device, x: Tensor) -> Result<Step> {
    let loaded = bundled::open(&a.model)?;
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
    let labels: Vec<u32> = (0..a.batch as u32).map(|i| i % n).collect();
    let labels = Tensor::from_vec(labels, a.batch, dev)?;
    Ok(Box::new(move || {
        let out = net.forward_t(&x, true)?;
        let logp = candle_nn::ops::log_softmax(&out.scores, D::Minus1)?;
        let loss = candle_nn::loss::nll(&logp, &labels)?;
        sgd.backward_step(&loss)?;
        loss.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
        Ok(())
    }))
}
