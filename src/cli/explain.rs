//! `gcm-inspect explain`: decisions and their evidence for image files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::image_io::{batch_tensor, load_planar, Planar};
use crate::error::{Error, Result};
use crate::evidence::{self, FrameMaps, HeatmapClasses, ModelInfo};
use crate::model::Predictor;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, or builtin:demo for the bundled demo model.
    #[arg(long)]
    pub model: String,
    /// Images to explain.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Write evidence PNGs to OUT/<image name>/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON list instead of text.
    #[arg(long)]
    pub json: bool,
    /// Heatmaps of every class's weight map, not only the decided class's.
    #[arg(long)]
    pub all_classes: bool,
    /// Resize images of another size to the model's input (otherwise refused).
    #[arg(long)]
    pub resize: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = super::positive)]
    pub batch_size: usize,
}

/// One line of `--json` output.
#[derive(Debug, Serialize)]
pub struct Explained {
    pub image: PathBuf,
    pub decision: String,
    pub class_index: usize,
    pub classes: Vec<String>,
    pub scores: Vec<f32>,
    pub probabilities: Vec<f32>,
    pub margin: f32,
    /// The evidence folder, when `--out` is given.
    pub evidence: Option<PathBuf>,
    /// Whether the written evidence reproduces every class score within its
    /// quantisation bound and the decision (when `--out` is given).
    pub evidence_reproduces: Option<bool>,
}

pub fn run(a: Args) -> Result<()> {
    let device = crate::device::open(&a.device)?;
    let p = Predictor::open(&a.model, &device)?;
    let cfg = p.config().clone();
    let images: Vec<Planar> = a
        .images
        .iter()
        .map(|f| {
            load_planar(
                f,
                cfg.input_channels,
                cfg.input_rows,
                cfg.input_cols,
                a.resize,
            )
        })
        .collect::<Result<_>>()?;
    let names = evidence_names(&a.images);
    let mut results = Vec::with_capacity(images.len());
    for (start, chunk) in (0..images.len())
        .step_by(a.batch_size)
        .map(|s| (s, &images[s..(s + a.batch_size).min(images.len())]))
    {
        let refs: Vec<&Planar> = chunk.iter().collect();
        let out = p.forward(&batch_tensor(&refs, &device)?)?;
        for (b, d) in p.decide(&out.scores)?.into_iter().enumerate() {
            let i = start + b;
            let (mut ev_dir, mut reproduces) = (None, None);
            if let Some(dir) = &a.out {
                let maps = FrameMaps::from_batch(&out.scaled, &out.cwm, b)?;
                let info = ModelInfo {
                    classes: p.classes(),
                    scaling: cfg.scaling.name(),
                    model_id: Some(&p.card.weights_sha256),
                };
                let heat = if a.all_classes {
                    HeatmapClasses::All
                } else {
                    HeatmapClasses::Decided
                };
                let ev = evidence::build(&images[i], &maps, info, &d.scores, d.class_index, heat)?;
                let target = dir.join(&names[i]);
                ev.write(&target)?;
                reproduces = Some(ev.check.ok());
                ev_dir = Some(target);
            }
            results.push(Explained {
                image: a.images[i].clone(),
                decision: d.class.clone(),
                class_index: d.class_index,
                classes: p.classes().to_vec(),
                scores: d.scores,
                probabilities: d.probabilities,
                margin: d.margin,
                evidence: ev_dir,
                evidence_reproduces: reproduces,
            });
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("serialises")
        );
    } else {
        for r in &results {
            let scores: Vec<String> = r
                .classes
                .iter()
                .zip(&r.scores)
                .zip(&r.probabilities)
                .map(|((c, s), q)| format!("{c} {s:+.4} ({:.1}%)", 100.0 * q))
                .collect();
            println!(
                "{}: {}  [{}]",
                r.image.display(),
                r.decision,
                scores.join(", ")
            );
            if let Some(e) = &r.evidence {
                println!(
                    "  evidence: {}{}",
                    e.display(),
                    if r.evidence_reproduces == Some(true) {
                        ""
                    } else {
                        "  (does NOT reproduce the decision)"
                    }
                );
            }
        }
    }
    if results.iter().any(|r| r.evidence_reproduces == Some(false)) {
        return Err(Error::Divergent(
            "written evidence does not reproduce a decision".into(),
        ));
    }
    Ok(())
}

/// Evidence folder names: the image's file stem, made unique with its index
/// where two images share a stem.
fn evidence_names(images: &[PathBuf]) -> Vec<String> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    };
    let mut seen = HashSet::new();
    let dup: HashSet<String> = images
        .iter()
        .map(|p| stem(p))
        .filter(|s| !seen.insert(s.clone()))
        .collect();
    images
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = stem(p);
            if dup.contains(&s) {
                format!("{i:04}-{s}")
            } else {
                s
            }
        })
        .collect()
}
