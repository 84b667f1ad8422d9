//! Labelled images in memory, decoded at a model's input size: what
//! training, validation and evaluation run on.

use std::path::PathBuf;

use rayon::prelude::*;

use super::image_io::{load_planar, Planar};
use super::Sample;
use crate::error::{Error, Result};

/// Decoded images at the model's input size, with labels.
#[derive(Clone, Debug, Default)]
pub struct ImageSet {
    pub images: Vec<Planar>,
    pub labels: Vec<usize>,
    pub paths: Vec<PathBuf>,
    /// Soft targets, one distribution over the classes per image; empty
    /// when training on the labels alone.
    pub targets: Vec<Vec<f32>>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Images per class.
    pub fn per_class(&self, classes: usize) -> Vec<usize> {
        let mut n = vec![0; classes];
        for &l in &self.labels {
            n[l] += 1;
        }
        n
    }

    /// Mean pixel value per channel in [0, 1].
    pub fn channel_mean(&self) -> Vec<f32> {
        let d = self.images.first().map(|i| i.channels).unwrap_or(1);
        let mut sum = vec![0f64; d];
        let mut count = 0usize;
        for im in &self.images {
            let hw = im.rows * im.cols;
            for (c, s) in sum.iter_mut().enumerate() {
                *s += im.data[c * hw..(c + 1) * hw]
                    .iter()
                    .map(|&b| b as f64)
                    .sum::<f64>();
            }
            count += hw;
        }
        sum.iter()
            .map(|s| (s / count.max(1) as f64 / 255.0) as f32)
            .collect()
    }
}

/// Decodes `samples` (in parallel) to `channels x rows x cols`; the first
/// unusable image (in sample order) is the error, naming the file.
pub fn load_images(
    samples: &[Sample],
    class_of: impl Fn(&str) -> Option<usize> + Sync,
    channels: usize,
    rows: usize,
    cols: usize,
    resize: bool,
    on_progress: impl Fn(usize) + Sync,
) -> Result<ImageSet> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let loaded: Vec<Result<(Planar, usize)>> = samples
        .par_iter()
        .map(|s| {
            let label = class_of(&s.label).ok_or_else(|| {
                Error::data(
                    &s.path,
                    format!("label {:?} is not a class of the model", s.label),
                )
            })?;
            let im = load_planar(&s.path, channels, rows, cols, resize)?;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            on_progress(n);
            Ok((im, label))
        })
        .collect();
    let mut set = ImageSet::default();
    for (s, r) in samples.iter().zip(loaded) {
        let (im, l) = r?;
        set.images.push(im);
        set.labels.push(l);
        set.paths.push(s.path.clone());
    }
    Ok(set)
}
