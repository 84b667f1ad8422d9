//! The GCM paper's Table 8 protocol for the baseline CNN's methods
//! (`eval --methods all`): (A) the CNN's accuracy; for each method, build
//! its map of *every* class for every image, use the sum of the map's
//! elements as that class's score, and (B) classify by those scores;
//! `decline = (A - B) / A`. Map kinds: (i) `raw` the weight map as it is,
//! (ii) `abs` its absolute value, (iv) `image` the map times the input
//! image (pixel values in [0, 1], before the model's scaling), summed over
//! channels. CAM and Grad-CAM maps are bilinearly upsampled to the input
//! first; for Guided Backprop and Guided Grad-CAM the response (all input
//! channels) is the weight map, as in the paper. Kind (iii), the CAM-style
//! colour blend, is not computed. The GCM's rows come from `eval` of a GCM
//! model (its `raw`, `abs`, `ccm`).

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use serde::Serialize;

use super::{cam, gradcam, guided, upsample, Method};
use crate::data::ImageSet;
use crate::error::Result;
use crate::eval::DeclineRow;
use crate::model::Cnn;

/// The map kinds computed, in column order.
pub const KINDS: [&str; 3] = ["raw", "abs", "image"];

/// One method's row.
#[derive(Clone, Debug, Serialize)]
pub struct MethodRow {
    pub method: &'static str,
    /// The model the row's maps come from.
    pub model: &'static str,
    /// By map kind.
    pub kinds: BTreeMap<String, DeclineRow>,
}

/// The table.
#[derive(Clone, Debug, Serialize)]
pub struct DeclineTable {
    pub images: usize,
    /// The CNN's accuracy A, 0..1.
    pub accuracy: f64,
    pub rows: Vec<MethodRow>,
}

/// Per-class map sums `[B, N]` of each kind, from maps `[B, C', R, C]`
/// (C' = 1 or the input's channels) of one class, into column `class`.
fn sums(m: &Tensor, image: &Tensor) -> Result<[Vec<f32>; 3]> {
    Ok([
        m.sum((1, 2, 3))?.to_vec1()?,
        m.abs()?.sum((1, 2, 3))?.to_vec1()?,
        m.broadcast_mul(image)?.sum((1, 2, 3))?.to_vec1()?,
    ])
}

/// Runs the protocol over `set` in batches of `batch` (CPU).
pub fn decline_table(net: &Cnn, set: &ImageSet, batch: usize) -> Result<DeclineTable> {
    let device = candle_core::Device::Cpu;
    let n = net.config().num_classes();
    let last = net.encoder().len() - 1;
    // correct[method][kind]
    let mut correct = [[0usize; 3]; 4];
    let mut a_correct = 0usize;
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, _) = crate::train::data::batch(set, chunk, None, &device)?;
        let labels: Vec<usize> = chunk.iter().map(|&i| set.labels[i]).collect();
        let (b, _, r, c) = x.dims4()?;
        let scaled = net.scale_input(&x)?;
        let pred = net
            .logits(&net.features(&scaled, false)?)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        a_correct += pred
            .iter()
            .zip(&labels)
            .filter(|(p, t)| **p as usize == **t)
            .count();
        // Row (method, kind, image) of `n` class scores, flat.
        let at = |m: usize, k: usize, bi: usize| ((m * 3 + k) * b + bi) * n;
        let mut scores = vec![0f32; 4 * 3 * b * n];
        for class in 0..n {
            let classes = vec![class; b];
            let cam_m = upsample(&cam::cam(net, &scaled, &classes)?, r, c)?.unsqueeze(1)?;
            let gc = gradcam::grad_cam(net, &scaled, &classes, last)?;
            let gb = guided::guided_backprop(net, &scaled, &classes)?;
            let ggc = guided::guided_grad_cam(&gc.map, &gb)?;
            let gc_m = upsample(&gc.map, r, c)?.unsqueeze(1)?;
            for (m, map) in [cam_m, gc_m, gb, ggc].iter().enumerate() {
                for (k, s) in sums(map, &x)?.into_iter().enumerate() {
                    for (bi, v) in s.into_iter().enumerate() {
                        scores[at(m, k, bi) + class] = v;
                    }
                }
            }
        }
        for (m, per_kind) in correct.iter_mut().enumerate() {
            for (k, c) in per_kind.iter_mut().enumerate() {
                for (bi, &t) in labels.iter().enumerate() {
                    let row = &scores[at(m, k, bi)..at(m, k, bi) + n];
                    *c += (crate::decision::argmax(row) == t) as usize;
                }
            }
        }
    }
    let images = set.len();
    let a = a_correct as f64 / images.max(1) as f64;
    let rows = Method::CNN
        .iter()
        .zip(correct)
        .map(|(method, per_kind)| MethodRow {
            method: method.name(),
            model: "cnn",
            kinds: KINDS
                .iter()
                .zip(per_kind)
                .map(|(k, c)| {
                    let acc = c as f64 / images.max(1) as f64;
                    let decline = if a > 0.0 { (a - acc) / a } else { 0.0 };
                    (
                        k.to_string(),
                        DeclineRow {
                            accuracy: acc,
                            decline,
                        },
                    )
                })
                .collect(),
        })
        .collect();
    Ok(DeclineTable {
        images,
        accuracy: a,
        rows,
    })
}

impl DeclineTable {
    /// The table in markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "decline ratio (GCM paper, Table 8) on {} images: B = accuracy when each class's score is the sum of its map\n\n",
            self.images
        );
        s += "| method | model | A | (i) raw: B / decline | (ii) abs | (iv) map x image |\n";
        s += "|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let cell = |k: &str| {
                r.kinds.get(k).map_or("-".to_string(), |d| {
                    format!("{:.2}% / {:.2}%", 100.0 * d.accuracy, 100.0 * d.decline)
                })
            };
            s += &format!(
                "| {} | {} | {:.2}% | {} | {} | {} |\n",
                r.method,
                r.model,
                100.0 * self.accuracy,
                cell("raw"),
                cell("abs"),
                cell("image")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn each_methods_raw_row_is_recomputed_from_its_maps() {
        // A tiny CNN and four images; the CAM raw scores are recomputed here
        // from the definition: sum of the upsampled CAM of each class. With
        // bilinear upsampling by 2 (edges clamped) the sum is 4 times the
        // coarse map's sum, so the argmax is that of mean(CAM) = score - bias.
        let mut cfg = ModelConfig::table6(8, 8, 1, vec!["a".into(), "b".into()]);
        cfg.encoder_widths = vec![3, 4];
        cfg.encoder_depths = vec![1, 1];
        cfg.stem_width = None;
        let (net, _) = Cnn::init(&cfg, 7, &candle_core::Device::Cpu).unwrap();
        let mut rng = crate::rng::Rng::derive(3, 0);
        let images = (0..4)
            .map(|_| crate::data::image_io::Planar {
                channels: 1,
                rows: 8,
                cols: 8,
                data: (0..64).map(|_| rng.below(256) as u8).collect(),
            })
            .collect();
        let set = ImageSet {
            images,
            labels: vec![0, 1, 0, 1],
            paths: vec![std::path::PathBuf::new(); 4],
            targets: Vec::new(),
        };
        let t = decline_table(&net, &set, 3).unwrap();
        assert_eq!(t.images, 4);
        assert_eq!(t.rows.len(), 4);
        let (x, _) =
            crate::train::data::batch(&set, &[0, 1, 2, 3], None, &candle_core::Device::Cpu)
                .unwrap();
        let scaled = net.scale_input(&x).unwrap();
        let scores = net
            .logits(&net.features(&scaled, false).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let bias = net.fc().1.to_vec1::<f32>().unwrap();
        let mut right = 0;
        for (i, s) in scores.iter().enumerate() {
            let by_cam: Vec<f32> = s.iter().zip(&bias).map(|(s, b)| s - b).collect();
            right += (crate::decision::argmax(&by_cam) == set.labels[i]) as usize;
        }
        let got = t.rows[0].kinds["raw"].accuracy;
        assert!(
            (got - right as f64 / 4.0).abs() < 1e-9,
            "{got} vs {right}/4"
        );
        assert!(t.markdown().contains("| cam | cnn |"));
    }
}
