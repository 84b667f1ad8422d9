//! `gcm-inspect bench`: how fast this machine runs this model (see `bench`).

use std::path::Path;

use crate::bench::{self, Mode, Options};
use crate::device;
use crate::error::{Error, Result};

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
    /// Time an evidence method instead of the bare forward: cam, gradcam,
    /// guided-backprop, guided-gradcam or cav on a baseline CNN model, gcm
    /// (forward + CCM) on a GCM model; each batch is decided, then mapped for
    /// its decided classes (CPU).
    #[arg(long, value_enum)]
    pub method: Option<crate::methods::Method>,
    /// With --method cav: the layer analysed (the input of encoder layer N).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub cav_layer: usize,
    /// Time a GCM's inference with test-time symmetry averaging, as the
    /// daemon's `tta:` runs it: flips (4 passes an image) or d4 (8).
    #[arg(long, value_enum, default_value = "none")]
    pub tta: crate::model::tta::Tta,
    /// First write a randomly initialised model to --model (for
    /// benchmarking before any training), sized by --size, --channels, --classes.
    #[arg(long)]
    pub init: bool,
    /// With --init: gcm (Table 3) or cnn (the Table 6 baseline).
    #[arg(long, value_enum, default_value = "gcm")]
    pub arch: crate::model::Arch,
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

pub fn run(a: Args) -> Result<()> {
    if let Some(t) = a.threads {
        // candle's stock ops read RAYON_NUM_THREADS; the engine uses the global pool.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        // Fails only if the pool was already built, which nothing before this does.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    let dev = device::open(&a.device)?;
    if a.init {
        if a.model.starts_with("builtin:") {
            return Err(Error::Usage(format!(
                "--init writes a model directory; {} is bundled in the binary",
                a.model
            )));
        }
        bench::write_random_model(Path::new(&a.model), a.arch, a.size, a.channels, &a.classes)?;
    }
    let report = bench::run(
        &Options {
            model: a.model.clone(),
            mode: a.mode,
            batch: a.batch,
            warmup: a.warmup,
            iters: a.iters,
            min_seconds: a.min_seconds,
            stock_ops: a.stock_ops,
            method: a.method,
            cav_layer: a.cav_layer,
            tta: a.tta,
        },
        &dev,
        &a.device,
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        );
    } else {
        let l = &report.latency_ms;
        let input = report.input;
        let mut what = match report.method {
            Some(m) => format!("{} {m}", report.arch),
            None => format!("{} {:?}", report.arch, report.mode),
        };
        if report.tta != "none" {
            what += &format!(" with tta {}", report.tta);
        }
        println!(
            "{} {} on {} ({} ops, {}, {} threads), batch {}, input {}x{}x{}: {:.1} images/s; \
             latency per batch p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms ({} iterations)",
            a.model,
            what,
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
