//! Decisions and their evidence for image files (`gcm-inspect explain`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use candle_core::Tensor;

use crate::data::image_io::{check_decoded, decode_bytes};
use crate::error::{Error, Result};
use crate::evidence::{self, DeviceMaps, Seen};
use crate::model::{Input, Predictor};
use crate::preprocess::{self, FrameData, Prepared, PreprocessSpec};

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

/// An image file read and checked against the model (its channels, and its
/// size unless resizing), before any image is decided.
pub(crate) fn checked(path: &Path, spec: &PreprocessSpec, resize: bool) -> Result<FrameData> {
    let bytes = std::fs::read(path).map_err(|e| Error::unreadable_input(path, e))?;
    let img =
        decode_bytes(&bytes).map_err(|e| Error::data(path, format!("cannot decode image: {e}")))?;
    check_decoded(path, &img, spec.channels, spec.rows, spec.cols, resize)?;
    Ok(FrameData::File { bytes })
}

/// Decides every image (and writes its evidence when asked), in order. The
/// images go through the preprocessing contract on the model's device, as
/// the daemon's frames do.
pub fn explain(p: &Predictor, images: &[PathBuf], opts: &Options) -> Result<Vec<Explained>> {
    let spec = PreprocessSpec::for_model(p.config(), None);
    let frames: Vec<FrameData> = images
        .iter()
        .map(|f| checked(f, &spec, opts.resize))
        .collect::<Result<_>>()?;
    let names = evidence_names(images);
    let batch = opts.batch_size.max(1);
    let mut results = Vec::with_capacity(images.len());
    for start in (0..frames.len()).step_by(batch) {
        let end = (start + batch).min(frames.len());
        let prepared: Vec<Prepared> = (start..end)
            .map(|i| {
                preprocess::prepare(&frames[i], &spec, p.device())
                    .map_err(|e| Error::data(&images[i], e.to_string()))
            })
            .collect::<Result<_>>()?;
        let scaled: Vec<&Tensor> = prepared.iter().map(|x| &x.scaled).collect();
        let out = p.forward(Input::Scaled(&Tensor::cat(&scaled, 0)?))?;
        for (b, d) in p.decide(&out.scores)?.into_iter().enumerate() {
            let i = start + b;
            let (mut evidence, mut evidence_reproduces) = (None, None);
            if let Some(dir) = &opts.out {
                let maps = DeviceMaps::from_batch(&out.scaled, &out.cwm, b)?;
                let frame = preprocess::full_frame(&frames[i], &spec)
                    .map_err(|e| Error::data(&images[i], e.to_string()))?;
                let seen = Seen {
                    frame: Some(&frame),
                    name: images[i].file_name().and_then(|n| n.to_str()),
                    ..Seen::input(&prepared[b].planar)
                };
                let ev = evidence::of_decision(p, &seen, &maps, &d, opts.all_classes)?;
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
pub(crate) fn evidence_names(images: &[PathBuf]) -> Vec<String> {
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
