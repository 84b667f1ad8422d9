//! `eval --methods all`: the GCM paper's Table 8 for every method, and
//! faithfulness curves beside it.
//!
//! **Decline ratio** (the paper's protocol): (A) a model's accuracy; for
//! each method, build its map of *every* class for every image, use the sum
//! of the map's elements as that class's score, and (B) classify by those
//! scores; `decline = (A - B) / A`. Map kinds:
//!
//! - (i) `raw`: the weight map as it is. CAM and Grad-CAM maps (and CAV
//!   above the input) are bilinearly upsampled to the input first; for
//!   Guided Backprop and Guided Grad-CAM the response (all input channels)
//!   is the weight map, as in the paper; CAV's is its signed map (the
//!   contributions summed over channels); the GCM's is its CWM.
//! - (ii) `abs`: its absolute value.
//! - (iii) `blend`: the CAM-style visual map, scored as the sum of its RGB
//!   values. The map (coarse maps upsampled *bicubically*; responses summed
//!   over channels) is min-max normalised on its own, as a person is shown
//!   it, jet-coloured ([`super::render::jet`], each channel in [0, 1]), and
//!   blended `0.7 x colour + 0.2 x image` (image in [0, 1], grey repeated
//!   over R, G, B), in floating point (no rounding to bytes).
//! - (iv) `image`: the map times the input image (pixel values in [0, 1],
//!   before the model's scaling), summed over channels; for the GCM its
//!   CCM (the CWM times its own scaled input), whose sum is the score times
//!   the input's size, so its decline is 0 up to ties.
//!
//! The CNN's methods run on the baseline CNN and are set against its
//! accuracy; the GCM's row (with a GCM model) against the GCM's. Beside the
//! decline ratios, each method's faithfulness for the class its model
//! decided ([`super::faithfulness`]): its relevance map is the weight map
//! summed over channels (the GCM's: its CCM).

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use serde::Serialize;

use super::faithfulness::{self, Accumulator, Faithfulness, Protocol};
use super::{bicubic, method_map, render, upsample, Method, MethodMap};
use crate::data::ImageSet;
use crate::error::Result;
use crate::eval::DeclineRow;
use crate::model::{Cnn, Input, Predictor};
use crate::rng::Rng;

/// The map kinds, in column order: (i), (ii), (iii), (iv).
pub const KINDS: [&str; 4] = ["raw", "abs", "blend", "image"];

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Images per batch.
    pub batch: usize,
    /// Steps of the faithfulness curves.
    pub steps: usize,
    /// The layer CAV analyses (the input of encoder layer N; 0 the pixels).
    pub cav_layer: usize,
    /// Standard deviation of ROAD's imputation noise.
    pub noise: f32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 32,
            steps: 10,
            cav_layer: 0,
            noise: 0.01,
        }
    }
}

/// One method's row.
#[derive(Clone, Debug, Serialize)]
pub struct MethodRow {
    pub method: &'static str,
    /// The model the row's maps come from (`cnn` or `gcm`).
    pub model: &'static str,
    /// That model's accuracy A, 0..1.
    pub accuracy: f64,
    /// By map kind.
    pub kinds: BTreeMap<String, DeclineRow>,
    pub faithfulness: Faithfulness,
}

/// The table.
#[derive(Clone, Debug, Serialize)]
pub struct DeclineTable {
    pub images: usize,
    /// The CNN's accuracy A, 0..1.
    pub accuracy: f64,
    /// The layer CAV analysed.
    pub cav_layer: usize,
    /// How the faithfulness curves were taken.
    pub faithfulness: Protocol,
    pub rows: Vec<MethodRow>,
}

/// The (iii) score of one single-channel map: the sum over pixels and RGB
/// of `0.7 jet(normalised map) + 0.2 image`, with `image_sum` the sum of the
/// image's RGB values.
pub fn blend_sum(map: &[f32], image_sum: f32) -> f32 {
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let span = (hi - lo).max(f32::MIN_POSITIVE);
    let colour: f32 = map
        .iter()
        .map(|&v| render::jet((v - lo) / span).iter().sum::<f32>())
        .sum();
    0.7 * colour + 0.2 * image_sum
}

/// One method's maps of one class for a batch.
struct Maps {
    /// The weight map at input size, `[B, C', R, C]`.
    full: Tensor,
    /// The map that is coloured for (iii), per image, row-major at input
    /// size.
    blend: Vec<Vec<f32>>,
}

/// Coarse maps `[B, h, w]` upsampled bicubically to `r x c`.
fn bicubic_all(m: &Tensor, r: usize, c: usize) -> Result<Vec<Vec<f32>>> {
    let (_, h, w) = m.dims3()?;
    Ok(m.flatten_from(1)?
        .to_vec2::<f32>()?
        .iter()
        .map(|v| bicubic(v, h, w, r, c))
        .collect())
}

/// `[B, C', R, C]` summed over channels, per image.
fn channel_sums(m: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(m.sum(1)?.flatten_from(1)?.to_vec2::<f32>()?)
}

fn cnn_maps(
    net: &Cnn,
    method: Method,
    scaled: &Tensor,
    classes: &[usize],
    cav_layer: usize,
) -> Result<Maps> {
    let (_, _, r, c) = scaled.dims4()?;
    Ok(match method_map(net, scaled, classes, method, cav_layer)? {
        MethodMap::Coarse(m) => Maps {
            full: upsample(&m, r, c)?.unsqueeze(1)?,
            blend: bicubic_all(&m, r, c)?,
        },
        MethodMap::Response(g) => Maps {
            blend: channel_sums(&g)?,
            full: g,
        },
    })
}

/// Per-class sums of each kind, filled class by class: `[kind][image][class]`.
type KindScores = Vec<Vec<Vec<f32>>>;

fn new_scores(b: usize, n: usize) -> KindScores {
    vec![vec![vec![0f32; n]; b]; KINDS.len()]
}

/// The four kinds' sums of one class's maps into `scores[..][b][class]`.
fn add_kinds(
    scores: &mut KindScores,
    class: usize,
    full: &Tensor,
    image: &Tensor,
    blend: &[Vec<f32>],
    image_rgb_sums: &[f32],
) -> Result<()> {
    let sums: [Vec<f32>; 3] = [
        full.sum((1, 2, 3))?.to_vec1()?,
        full.abs()?.sum((1, 2, 3))?.to_vec1()?,
        full.broadcast_mul(image)?.sum((1, 2, 3))?.to_vec1()?,
    ];
    for b in 0..blend.len() {
        scores[0][b][class] = sums[0][b];
        scores[1][b][class] = sums[1][b];
        scores[2][b][class] = blend_sum(&blend[b], image_rgb_sums[b]);
        scores[3][b][class] = sums[2][b];
    }
    Ok(())
}

/// Counts of correct decisions per kind.
fn count_correct(correct: &mut [usize; 4], scores: &KindScores, labels: &[usize]) {
    for (k, c) in correct.iter_mut().enumerate() {
        for (b, &t) in labels.iter().enumerate() {
            *c += (crate::decision::argmax(&scores[k][b]) == t) as usize;
        }
    }
}

/// Probabilities of `class` under `logits_of` for a flat batch of raw images.
fn class_probs(
    logits_of: &dyn Fn(&Tensor) -> Result<Tensor>,
    dims: (usize, usize, usize),
    class: usize,
) -> impl FnMut(Vec<f32>, usize) -> Result<Vec<f32>> + '_ {
    move |flat, n| {
        let x = Tensor::from_vec(flat, (n, dims.0, dims.1, dims.2), &candle_core::Device::Cpu)?;
        let p = candle_nn::ops::softmax(&logits_of(&x)?, D::Minus1)?;
        Ok(p.narrow(1, class, 1)?.flatten_all()?.to_vec1()?)
    }
}

/// Each image's decided class: the argmax of its row of scores.
fn decided(scores: &Tensor) -> Result<Vec<usize>> {
    Ok(scores
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|p| p as usize)
        .collect())
}

/// Keeps `class`'s map sums as the relevance of the images decided as it.
fn keep_decided(relevance: &mut [Vec<f32>], sums: Vec<Vec<f32>>, pred: &[usize], class: usize) {
    for (bi, s) in sums.into_iter().enumerate() {
        if pred[bi] == class {
            relevance[bi] = s;
        }
    }
}

/// A batch's images, each with the relevance ranking of the class its
/// model decided.
struct Ranked<'a> {
    planes: &'a [Vec<f32>],
    dims: (usize, usize, usize),
    relevance: &'a [Vec<f32>],
    pred: &'a [usize],
}

impl Ranked<'_> {
    /// Each image's deletion, insertion and ROAD scores, added to `acc`.
    fn add_to(
        &self,
        acc: &mut Accumulator,
        logits_of: &dyn Fn(&Tensor) -> Result<Tensor>,
        protocol: &Protocol,
        rng: &mut Rng,
    ) -> Result<()> {
        let (_, r, c) = self.dims;
        for (bi, plane) in self.planes.iter().enumerate() {
            let mut probs = class_probs(logits_of, self.dims, self.pred[bi]);
            acc.add(&faithfulness::score_image(
                plane,
                r,
                c,
                &self.relevance[bi],
                protocol,
                rng,
                &mut probs,
            )?);
        }
        Ok(())
    }
}

/// The per-channel mean of a set's pixels, in [0, 1].
pub fn set_mean(set: &ImageSet) -> Vec<f32> {
    let d = set.images.first().map_or(1, |p| p.channels);
    let mut sum = vec![0f64; d];
    let mut n = 0usize;
    for p in &set.images {
        let hw = p.rows * p.cols;
        for (ch, s) in sum.iter_mut().enumerate() {
            *s += p.data[ch * hw..(ch + 1) * hw]
                .iter()
                .map(|&v| v as f64 / 255.0)
                .sum::<f64>();
        }
        n += hw;
    }
    sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect()
}

fn rows_of(
    methods: &[(&'static str, &'static str)],
    correct: &[[usize; 4]],
    faith: &[Accumulator],
    accuracy: &[f64],
    images: usize,
) -> Vec<MethodRow> {
    methods
        .iter()
        .enumerate()
        .map(|(m, &(method, model))| {
            let a = accuracy[m];
            MethodRow {
                method,
                model,
                accuracy: a,
                kinds: KINDS
                    .iter()
                    .zip(correct[m])
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
                faithfulness: faith[m].mean(),
            }
        })
        .collect()
}

/// Runs the protocol over `set` (CPU): the CNN's methods, and the GCM's
/// row when `gcm` is given.
pub fn decline_table(
    net: &Cnn,
    gcm: Option<&Predictor>,
    set: &ImageSet,
    o: &Options,
) -> Result<DeclineTable> {
    let device = candle_core::Device::Cpu;
    let n = net.config().num_classes();
    let protocol = Protocol {
        steps: o.steps.max(2),
        fill: set_mean(set),
        noise: o.noise,
    };
    let mut names: Vec<(&'static str, &'static str)> =
        Method::CNN.iter().map(|m| (m.name(), "cnn")).collect();
    if gcm.is_some() {
        names.push((Method::Gcm.name(), "gcm"));
    }
    let mut correct = vec![[0usize; 4]; names.len()];
    let mut faith = vec![Accumulator::default(); names.len()];
    let mut a_correct = [0usize; 2];
    let mut rng = Rng::derive(0, 0x0fa1);
    let cnn_logits = |x: &Tensor| -> Result<Tensor> { Ok(net.forward_t(x, false)?.scores) };
    let gcm_logits = |x: &Tensor| -> Result<Tensor> {
        let p = gcm.expect("only called with a GCM");
        Ok(p.forward(Input::Raw(x))?.scores)
    };
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(o.batch.max(1)) {
        let (x, _) = crate::train::data::batch(set, chunk, None, &device)?;
        let labels: Vec<usize> = chunk.iter().map(|&i| set.labels[i]).collect();
        let (b, d, r, c) = x.dims4()?;
        let dims = (d, r, c);
        let planes = x.flatten_from(1)?.to_vec2::<f32>()?;
        // The image's RGB sum (grey counts three times).
        let rgb: Vec<f32> = planes
            .iter()
            .map(|p| p.iter().sum::<f32>() * 3.0 / d as f32)
            .collect();
        let scaled = net.scale_input(&x)?;
        let pred = decided(&net.logits(&net.features(&scaled, false)?)?)?;
        a_correct[0] += pred.iter().zip(&labels).filter(|(p, t)| p == t).count();
        for (m, &method) in Method::CNN.iter().enumerate() {
            let mut scores = new_scores(b, n);
            let mut relevance = vec![Vec::new(); b];
            for class in 0..n {
                let maps = cnn_maps(net, method, &scaled, &vec![class; b], o.cav_layer)?;
                add_kinds(&mut scores, class, &maps.full, &x, &maps.blend, &rgb)?;
                keep_decided(&mut relevance, channel_sums(&maps.full)?, &pred, class);
            }
            count_correct(&mut correct[m], &scores, &labels);
            let ranked = Ranked {
                planes: &planes,
                dims,
                relevance: &relevance,
                pred: &pred,
            };
            ranked.add_to(&mut faith[m], &cnn_logits, &protocol, &mut rng)?;
        }
        if let Some(p) = gcm {
            let m = names.len() - 1;
            let out = p.forward(Input::Raw(&x))?;
            let gpred = decided(&out.scores)?;
            a_correct[1] += gpred.iter().zip(&labels).filter(|(p, t)| p == t).count();
            let mut scores = new_scores(b, n);
            let mut relevance = vec![Vec::new(); b];
            for class in 0..n {
                // [B, 1, R, C]; (iv) with the scaled input as the image: the CCM.
                let cwm = out.cwm.narrow(1, class, 1)?.contiguous()?;
                add_kinds(
                    &mut scores,
                    class,
                    &cwm,
                    &out.scaled,
                    &channel_sums(&cwm)?,
                    &rgb,
                )?;
                let ccm_maps = channel_sums(&out.scaled.broadcast_mul(&cwm)?)?;
                keep_decided(&mut relevance, ccm_maps, &gpred, class);
            }
            count_correct(&mut correct[m], &scores, &labels);
            let ranked = Ranked {
                planes: &planes,
                dims,
                relevance: &relevance,
                pred: &gpred,
            };
            ranked.add_to(&mut faith[m], &gcm_logits, &protocol, &mut rng)?;
        }
    }
    let images = set.len();
    let acc = |k: usize| a_correct[k] as f64 / images.max(1) as f64;
    let accuracy: Vec<f64> = names
        .iter()
        .map(|(_, model)| acc((*model == "gcm") as usize))
        .collect();
    Ok(DeclineTable {
        images,
        accuracy: acc(0),
        cav_layer: o.cav_layer,
        faithfulness: protocol,
        rows: rows_of(&names, &correct, &faith, &accuracy, images),
    })
}

impl DeclineTable {
    /// The tables in markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "decline ratio (GCM paper, Table 8) on {} images: B = accuracy when each class's score is the sum of its map; decline = (A - B) / A\n\
             (i) the weight map; (ii) its absolute value; (iii) CAM-style blend: coarse maps upsampled bicubically, each map min-max normalised, jet colours x 0.7 + image x 0.2, RGB summed; \
             (iv) map x image (pixels in [0, 1]; GCM: its CCM). CAV at the input of encoder layer {}. A is the accuracy of the row's model.\n\n",
            self.images, self.cav_layer
        );
        s += "| method | model | A | (i) raw: B / decline | (ii) abs | (iii) blend | (iv) map x image |\n";
        s += "|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let cell = |k: &str| {
                r.kinds.get(k).map_or("-".to_string(), |d| {
                    format!("{:.2}% / {:.2}%", 100.0 * d.accuracy, 100.0 * d.decline)
                })
            };
            s += &format!(
                "| {} | {} | {:.2}% | {} | {} | {} | {} |\n",
                r.method,
                r.model,
                100.0 * r.accuracy,
                cell("raw"),
                cell("abs"),
                cell("blend"),
                cell("image")
            );
        }
        let p = &self.faithfulness;
        let fill: Vec<String> = p.fill.iter().map(|v| format!("{v:.3}")).collect();
        s += &format!(
            "\nfaithfulness: probability of the class the row's model decided, as pixels are removed or added in the order of the map (most relevant first); \
             {} steps; deletion/insertion fill value = the set's mean per channel ({}); ROAD: noisy linear imputation, noise sd {} (pixels in [0, 1]), removed fractions 1/{}..{}/{}\n\n",
            p.steps,
            fill.join(", "),
            p.noise,
            p.steps,
            p.steps - 1,
            p.steps
        );
        s += "| method | model | deletion AUC (lower better) | insertion AUC (higher better) | ROAD MoRF (lower better) | ROAD LeRF (higher better) |\n";
        s += "|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let f = &r.faithfulness;
            s += &format!(
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
                r.method, r.model, f.deletion, f.insertion, f.road_morf, f.road_lerf
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn tiny_set() -> (Cnn, ImageSet) {
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
        (net, set)
    }

    #[test]
    fn each_methods_raw_row_is_recomputed_from_its_maps() {
        // A tiny CNN and four images; the CAM raw scores are recomputed here
        // from the definition: sum of the upsampled CAM of each class. With
        // bilinear upsampling by 2 (edges clamped) the sum is 4 times the
        // coarse map's sum, so the argmax is that of mean(CAM) = score - bias.
        let (net, set) = tiny_set();
        let o = Options {
            batch: 3,
            steps: 4,
            ..Options::default()
        };
        let t = decline_table(&net, None, &set, &o).unwrap();
        assert_eq!(t.images, 4);
        assert_eq!(t.rows.len(), 5);
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
        for r in &t.rows {
            assert_eq!(r.kinds.len(), 4, "{}", r.method);
            let f = &r.faithfulness;
            for v in [f.deletion, f.insertion, f.road_morf, f.road_lerf] {
                assert!((0.0..=1.0).contains(&v), "{}: {f:?}", r.method);
            }
        }
        assert!(t.markdown().contains("| cav | cnn |"));
        assert!(t.markdown().contains("4 steps"));
    }

    #[test]
    fn blend_score_by_hand() {
        // Map (0, 1): normalised (0, 1); jet sums 0.5 and 0.5 (dark blue,
        // dark red): 0.7 x 1 + 0.2 x 6.
        let s = blend_sum(&[0.0, 1.0], 6.0);
        assert!((s - (0.7 + 1.2)).abs() < 1e-6, "{s}");
        // The middle of the range is brightest in jet (sum 2).
        let s = blend_sum(&[0.0, 0.5, 1.0], 0.0);
        assert!((s - 0.7 * 3.0).abs() < 1e-6, "{s}");
    }

    #[test]
    fn set_mean_is_per_channel_in_unit_range() {
        let (_, set) = tiny_set();
        let m = set_mean(&set);
        let want = set
            .images
            .iter()
            .flat_map(|p| p.data.iter())
            .map(|&v| v as f64)
            .sum::<f64>()
            / (4.0 * 64.0 * 255.0);
        assert_eq!(m.len(), 1);
        assert!((m[0] as f64 - want).abs() < 1e-6);
    }
}
