//! Decisions and their evidence for image files (`gcm-inspect explain`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::image_io::{batch_tensor, load_planar, Planar};
use crate::error::Result;
use crate::evidence::{self, DeviceMaps};
use crate::model::{Input, Predictor};

/// How to explain.
#[derive(Clone, Debug)]
pub struct Options {
    /// Write evidence to `out/<image name>/`.
    pub out: Option<PathBuf>,
    /// Heatmaps of every class's weight map, not only the decided class's.
    pub all_classes: bool,
    /// Resize images of another size to the model's input (otherwise refused).
    pub resize: bool,
    /// Images per forward pass (at least 1).
    pub batch_size: usize,
}

/// One image's decision (a line of `explain --json`).
#[derive(Debug, Serialize)]
pub struct Explained {
    pub image: PathBuf,
    pub decision: String,
    pub class_index: usize,
    pub classes: Vec<String>,
    pub scores: Vec<f32>,
    pub probabilities: Vec<f32>,
    pub margin: f32,
    /// The evidence folder, when `out` is given.
    pub evidence: Option<PathBuf>,
    /// Whether the written evidence reproduces every class score within its
    /// quantisation bound and the decision (when `out` is given).
    pub evidence_reproduces: Option<bool>,
}

/// Decides every image (and writes its evidence when asked), in order.
pub fn explain(p: &Predictor, images: &[PathBuf], opts: &Options) -> Result<Vec<Explained>> {
    let cfg = p.config();
    let planars: Vec<Planar> = images
        .iter()
        .map(|f| {
            load_planar(
                f,
                cfg.input_channels,
                cfg.input_rows,
                cfg.input_cols,
                opts.resize,
            )
        })
        .collect::<Result<_>>()?;
    let names = evidence_names(images);
    let batch = opts.batch_size.max(1);
    let mut results = Vec::with_capacity(images.len());
    for (start, chunk) in (0..planars.len())
        .step_by(batch)
        .map(|s| (s, &planars[s..(s + batch).min(planars.len())]))
    {
        let refs: Vec<&Planar> = chunk.iter().collect();
        let out = p.forward(Input::Raw(&batch_tensor(&refs, p.device())?))?;
        for (b, d) in p.decide(&out.scores)?.into_iter().enumerate() {
            let i = start + b;
            let (mut evidence, mut evidence_reproduces) = (None, None);
            if let Some(dir) = &opts.out {
                let maps = DeviceMaps::from_batch(&out.scaled, &out.cwm, b)?;
                let ev = evidence::of_decision(p, &planars[i], &maps, &d, opts.all_classes)?;
                let target = dir.join(&names[i]);
                ev.write(&target)?;
                evidence_reproduces = Some(ev.check.ok());
                evidence = Some(target);
            }
            results.push(Explained {
                image: images[i].clone(),
                decision: d.class,
                class_index: d.class_index,
                classes: p.classes().to_vec(),
                scores: d.scores,
                probabilities: d.probabilities,
                margin: d.margin,
                evidence,
                evidence_reproduces,
            });
        }
    }
    Ok(results)
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
