//! `gcm-inspect eval --sweep`: the review threshold
//! (`decision.min_probability`) swept over a labelled set, with the value
//! to configure for a miss-rate limit (conventions: [`crate::sweep`]).

use std::path::{Path, PathBuf};

use crate::config::{DecisionConfig, Loaded};
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::eval::{for_batches, EvalReport, Evaluator};
use crate::model::{Input, Predictor};
use crate::sweep::write::{self, Outcome, FILES};
use crate::sweep::Scored;
use crate::verdict::FrameStats;

#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Sweep decision.min_probability: precision, recall, miss, false-reject
    /// and review rates per threshold, ROC and PR curves, per-image
    /// predictions, and the threshold to configure (see --max-miss).
    #[arg(long)]
    pub sweep: bool,
    /// Classes that mean a defective part (comma-separated). Default: the
    /// decision.reject_classes of --config, else of the built-in config.
    #[arg(long, value_name = "A,B", value_delimiter = ',', requires = "sweep")]
    pub reject_classes: Option<Vec<String>>,
    /// Daemon config whose decision: section (reject classes, margin band,
    /// health checks) the sweep applies. Default: the built-in config.
    #[arg(long, value_name = "FILE", requires = "sweep")]
    pub config: Option<PathBuf>,
    /// The largest miss rate (defective frames given ok) the suggested
    /// threshold may have.
    #[arg(long, default_value_t = 0.01, value_parser = super::fraction, requires = "sweep")]
    pub max_miss: f64,
    /// Folder for sweep.csv, roc.csv, pr.csv, roc.png, pr.png and
    /// predictions.csv.
    #[arg(long, value_name = "DIR", default_value = "sweep", requires = "sweep")]
    pub out: PathBuf,
}

/// The decision rules to sweep, with reject classes the model has.
pub fn rules(a: &SweepArgs, classes: &[String]) -> Result<DecisionConfig> {
    let mut cfg = Loaded::from_arg(a.config.as_deref())?.config.decision;
    let origin = match (&a.reject_classes, &a.config) {
        (Some(list), _) => {
            cfg.reject_classes = list.iter().map(|c| c.trim().to_string()).collect();
            "--reject-classes".to_string()
        }
        (None, Some(f)) => format!("decision.reject_classes of {}", f.display()),
        (None, None) => "decision.reject_classes of the built-in config".to_string(),
    };
    if cfg.reject_classes.is_empty() {
        let msg = format!("{origin} is empty: the sweep needs a reject class");
        return Err(Error::Usage(msg));
    }
    if let Some(c) = cfg.reject_classes.iter().find(|c| !classes.contains(c)) {
        let msg = format!(
            "{origin}: {c:?} is not a class of the model (classes: {}); \
             name the defect classes with --reject-classes",
            classes.join(", ")
        );
        return Err(Error::Usage(msg));
    }
    Ok(cfg)
}

/// One pass over `set`: the eval report and each image's decision.
fn score(
    p: &Predictor,
    set: &ImageSet,
    batch: usize,
    device: &candle_core::Device,
) -> Result<(EvalReport, Vec<Scored>)> {
    let mut ev = Evaluator::new(p.classes());
    let mut scored = Vec::with_capacity(set.len());
    let forward = |x: &candle_core::Tensor| p.forward(Input::Raw(x));
    for_batches(set, batch, device, forward, |out, chunk| {
        let labels: Vec<usize> = chunk.iter().map(|&i| set.labels[i]).collect();
        ev.add(out, &labels)?;
        for (&i, decision) in chunk.iter().zip(p.decide(&out.scores)?) {
            scored.push(Scored {
                path: set.paths[i].clone(),
                label: set.labels[i],
                decision,
                stats: FrameStats::of(&set.images[i].data),
            });
        }
        Ok(())
    })?;
    Ok((ev.report(), scored))
}

/// The sweep of `scored` under `cfg`; the set must hold defective and good
/// images (`data` names it in the error).
fn outcome(
    cfg: DecisionConfig,
    classes: &[String],
    scored: &[Scored],
    max_miss: f64,
    data: &Path,
) -> Result<Outcome> {
    let o = Outcome::of(cfg, classes, scored, max_miss);
    if o.curve.defective == 0 || o.curve.good == 0 {
        let msg = format!(
            "{} defective images ({}) and {} good ones: the sweep needs both",
            o.curve.defective,
            o.cfg.reject_classes.join(", "),
            o.curve.good
        );
        return Err(Error::data(data, msg));
    }
    Ok(o)
}

/// Runs the sweep on the loaded `set`, writes its files and prints the
/// eval report, the summary and the config snippet.
pub fn run(
    a: &SweepArgs,
    cfg: DecisionConfig,
    p: &Predictor,
    set: &ImageSet,
    batch: usize,
    data: &Path,
) -> Result<()> {
    let (report, scored) = score(p, set, batch, p.device())?;
    let o = outcome(cfg, p.classes(), &scored, a.max_miss, data)?;
    write::files(&a.out, &o, &scored)?;
    print!("{}\n{}", report.render(), write::summary(&o));
    println!("\npaste into the decision: section of the config (other keys as they are):");
    print!("{}", write::snippet(&o));
    println!("\nwrote {} into {}", FILES.join(", "), a.out.display());
    Ok(())
}
