//! Faithfulness of a relevance map, beyond the GCM paper: does the model's
//! belief follow the pixels the map calls relevant?
//!
//! The pixels of an image are ranked by the map's value (highest first,
//! signed: a pixel that suppresses the class ranks last; ties by position),
//! all channels of a pixel together. With `steps` S, at step k = 0..S the
//! first `round(k / S * R * C)` pixels of that order are changed, and the
//! model's probability of the class it decided on the intact image is read:
//!
//! - **deletion** (Petsiuk et al., RISE): the ranked pixels are set to the
//!   fill value, starting from the image. Area under the probability curve
//!   (trapezoid over the removed fraction 0..1): lower is more faithful.
//! - **insertion**: the ranked pixels are copied from the image into an
//!   image of the fill value. Area under the curve: higher is more faithful.
//! - **ROAD** (Rong et al., "A consistent and efficient evaluation strategy
//!   for attribution methods", ICML 2022): the ranked pixels are removed
//!   and *imputed* from their neighbours, so that the removal itself leaves
//!   no pattern the model could read (a flat fill value is one, and it says
//!   where the pixels were). Noisy linear imputation: each removed pixel is
//!   the weighted mean of its 8 neighbours (weights 1/6 sideways, 1/12
//!   diagonal), removed neighbours included, a sparse linear system solved
//!   per channel by conjugate gradients, then Gaussian noise is added. MoRF
//!   removes the most relevant first (mean probability over the removed
//!   fractions 1/S..(S-1)/S: lower is more faithful), LeRF the least
//!   relevant first (higher is more faithful).
//!
//! The fill value is the evaluated set's mean per channel (pixel values in
//! [0, 1]), stated with the number of steps in `eval --methods all`'s table.

use serde::Serialize;

use crate::rng::Rng;

/// How the curves are taken.
#[derive(Clone, Debug, Serialize)]
pub struct Protocol {
    /// Steps S of each curve (S + 1 points for deletion and insertion,
    /// S - 1 removed fractions for ROAD).
    pub steps: usize,
    /// Fill value per channel (deletion, insertion), in [0, 1].
    pub fill: Vec<f32>,
    /// Standard deviation of ROAD's imputation noise, in [0, 1] pixel units.
    pub noise: f32,
}

/// Mean scores over the images.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Faithfulness {
    /// Deletion AUC of the class probability (lower is better).
    pub deletion: f64,
    /// Insertion AUC of the class probability (higher is better).
    pub insertion: f64,
    /// ROAD, most relevant first: mean class probability (lower is better).
    pub road_morf: f64,
    /// ROAD, least relevant first: mean class probability (higher is better).
    pub road_lerf: f64,
}

/// Sums of [`Faithfulness`] over images.
#[derive(Clone, Debug, Default)]
pub struct Accumulator {
    sum: [f64; 4],
    n: usize,
}

impl Accumulator {
    pub fn add(&mut self, f: &Faithfulness) {
        for (s, v) in self
            .sum
            .iter_mut()
            .zip([f.deletion, f.insertion, f.road_morf, f.road_lerf])
        {
            *s += v;
        }
        self.n += 1;
    }

    pub fn mean(&self) -> Faithfulness {
        let n = self.n.max(1) as f64;
        Faithfulness {
            deletion: self.sum[0] / n,
            insertion: self.sum[1] / n,
            road_morf: self.sum[2] / n,
            road_lerf: self.sum[3] / n,
        }
    }
}

/// Pixel indices, most relevant first (ties by index).
pub fn order(relevance: &[f32]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..relevance.len()).collect();
    o.sort_by(|&a, &b| relevance[b].total_cmp(&relevance[a]).then(a.cmp(&b)));
    o
}

/// Pixels changed at step `k` of `steps` out of `n`.
fn count(k: usize, steps: usize, n: usize) -> usize {
    ((k as f64 / steps as f64) * n as f64).round() as usize
}

/// The deletion (`insert = false`) or insertion images of one planar image
/// `[D, R, C]` (`hw = R * C` pixels per channel), steps 0..=S, concatenated.
pub fn fill_curve(img: &[f32], hw: usize, order: &[usize], p: &Protocol, insert: bool) -> Vec<f32> {
    let d = img.len() / hw;
    let mut out = Vec::with_capacity((p.steps + 1) * img.len());
    for k in 0..=p.steps {
        let n = count(k, p.steps, hw);
        let mut x: Vec<f32> = if insert {
            (0..d)
                .flat_map(|ch| std::iter::repeat_n(p.fill[ch], hw))
                .collect()
        } else {
            img.to_vec()
        };
        for &i in &order[..n] {
            for ch in 0..d {
                x[ch * hw + i] = if insert { img[ch * hw + i] } else { p.fill[ch] };
            }
        }
        out.extend(x);
    }
    out
}

/// ROAD images (removed fractions 1/S..(S-1)/S, imputed with noise) of one
/// planar image `[D, R, C]`, concatenated.
pub fn road_curve(
    img: &[f32],
    rows: usize,
    cols: usize,
    order: &[usize],
    p: &Protocol,
    rng: &mut Rng,
) -> Vec<f32> {
    let hw = rows * cols;
    let mut out = Vec::with_capacity(p.steps.saturating_sub(1) * img.len());
    for k in 1..p.steps {
        let mut removed = vec![false; hw];
        for &i in &order[..count(k, p.steps, hw)] {
            removed[i] = true;
        }
        let mut x = impute(img, rows, cols, &removed);
        let d = img.len() / hw;
        for ch in 0..d {
            for (i, &r) in removed.iter().enumerate() {
                if r {
                    x[ch * hw + i] += p.noise * rng.normal() as f32;
                }
            }
        }
        out.extend(x);
    }
    out
}

/// The 8 neighbours and their weights in ROAD's linear imputation.
const NEIGHBOURS: [(isize, isize, f32); 8] = [
    (-1, -1, 1.0 / 12.0),
    (-1, 0, 1.0 / 6.0),
    (-1, 1, 1.0 / 12.0),
    (0, -1, 1.0 / 6.0),
    (0, 1, 1.0 / 6.0),
    (1, -1, 1.0 / 12.0),
    (1, 0, 1.0 / 6.0),
    (1, 1, 1.0 / 12.0),
];

/// Linear imputation (no noise) of the `removed` pixels of a planar image
/// `[D, R, C]`: each removed pixel becomes the weighted mean of its
/// neighbours inside the image, removed ones included. Solved per channel
/// by conjugate gradients on the symmetric positive definite system
/// `sum_q w_q v_p - sum_{q removed} w_q v_q = sum_{q kept} w_q v_q` (when
/// every pixel is removed the system has no anchor and the image's mean is
/// used instead).
pub fn impute(img: &[f32], rows: usize, cols: usize, removed: &[bool]) -> Vec<f32> {
    let hw = rows * cols;
    let mut out = img.to_vec();
    let unknown: Vec<usize> = (0..hw).filter(|&i| removed[i]).collect();
    if unknown.is_empty() {
        return out;
    }
    let d = img.len() / hw;
    if unknown.len() == hw {
        for ch in 0..d {
            let m = img[ch * hw..(ch + 1) * hw].iter().sum::<f32>() / hw as f32;
            out[ch * hw..(ch + 1) * hw].fill(m);
        }
        return out;
    }
    let mut slot = vec![usize::MAX; hw];
    for (u, &i) in unknown.iter().enumerate() {
        slot[i] = u;
    }
    // Per unknown: its diagonal and its (neighbour, weight) pairs.
    let nbrs = |i: usize| {
        let (r, c) = ((i / cols) as isize, (i % cols) as isize);
        NEIGHBOURS.iter().filter_map(move |&(dr, dc, w)| {
            let (rr, cc) = (r + dr, c + dc);
            (rr >= 0 && cc >= 0 && (rr as usize) < rows && (cc as usize) < cols)
                .then(|| (rr as usize * cols + cc as usize, w))
        })
    };
    let diag: Vec<f32> = unknown
        .iter()
        .map(|&i| nbrs(i).map(|(_, w)| w).sum())
        .collect();
    let apply = |v: &[f32], out: &mut [f32]| {
        for (u, &i) in unknown.iter().enumerate() {
            let mut s = diag[u] * v[u];
            for (q, w) in nbrs(i) {
                if slot[q] != usize::MAX {
                    s -= w * v[slot[q]];
                }
            }
            out[u] = s;
        }
    };
    let n = unknown.len();
    for ch in 0..d {
        let plane = &img[ch * hw..(ch + 1) * hw];
        let b: Vec<f32> = unknown
            .iter()
            .map(|&i| {
                nbrs(i)
                    .filter(|&(q, _)| slot[q] == usize::MAX)
                    .map(|(q, w)| w * plane[q])
                    .sum()
            })
            .collect();
        // Conjugate gradients from the Jacobi guess b / diag.
        let mut x: Vec<f32> = b.iter().zip(&diag).map(|(b, d)| b / d).collect();
        let mut ax = vec![0f32; n];
        apply(&x, &mut ax);
        let mut r: Vec<f32> = b.iter().zip(&ax).map(|(b, a)| b - a).collect();
        let mut p = r.clone();
        let mut rr: f64 = r.iter().map(|v| (*v as f64) * (*v as f64)).sum();
        let bb: f64 = b
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .max(1e-30);
        let mut ap = vec![0f32; n];
        for _ in 0..(4 * n).min(2000) {
            if rr <= 1e-12 * bb {
                break;
            }
            apply(&p, &mut ap);
            let pap: f64 = p
                .iter()
                .zip(&ap)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            if pap <= 0.0 {
                break;
            }
            let alpha = rr / pap;
            for u in 0..n {
                x[u] += (alpha * p[u] as f64) as f32;
                r[u] -= (alpha * ap[u] as f64) as f32;
            }
            let rr_new: f64 = r.iter().map(|v| (*v as f64) * (*v as f64)).sum();
            let beta = rr_new / rr;
            for u in 0..n {
                p[u] = r[u] + (beta * p[u] as f64) as f32;
            }
            rr = rr_new;
        }
        for (u, &i) in unknown.iter().enumerate() {
            out[ch * hw + i] = x[u];
        }
    }
    out
}

/// Trapezoid area under equally spaced values over [0, 1].
pub fn auc(v: &[f32]) -> f64 {
    if v.len() < 2 {
        return v.first().map_or(0.0, |&x| x as f64);
    }
    let s: f64 = v
        .windows(2)
        .map(|w| (w[0] as f64 + w[1] as f64) / 2.0)
        .sum();
    s / (v.len() - 1) as f64
}

/// The four scores of one image for one map: `probs` runs the model on a
/// batch of planar images `[n, D, R, C]` (flat) and returns, per image, the
/// probability of `class`.
pub fn score_image(
    img: &[f32],
    rows: usize,
    cols: usize,
    relevance: &[f32],
    p: &Protocol,
    rng: &mut Rng,
    probs: &mut dyn FnMut(Vec<f32>, usize) -> crate::error::Result<Vec<f32>>,
) -> crate::error::Result<Faithfulness> {
    let hw = rows * cols;
    let most = order(relevance);
    let least: Vec<usize> = most.iter().rev().copied().collect();
    let mut all = fill_curve(img, hw, &most, p, false);
    all.extend(fill_curve(img, hw, &most, p, true));
    all.extend(road_curve(img, rows, cols, &most, p, rng));
    all.extend(road_curve(img, rows, cols, &least, p, rng));
    let n = all.len() / img.len();
    let pr = probs(all, n)?;
    let s = p.steps;
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
    Ok(Faithfulness {
        deletion: auc(&pr[..=s]),
        insertion: auc(&pr[s + 1..2 * s + 2]),
        road_morf: mean(&pr[2 * s + 2..3 * s + 1]),
        road_lerf: mean(&pr[3 * s + 1..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(steps: usize) -> Protocol {
        Protocol {
            steps,
            fill: vec![0.5],
            noise: 0.0,
        }
    }

    #[test]
    fn order_is_most_relevant_first_signed_ties_by_position() {
        assert_eq!(order(&[0.1, -2.0, 3.0, 0.1]), vec![2, 0, 3, 1]);
    }

    #[test]
    fn deletion_and_insertion_images_step_by_step() {
        // 1 channel, 4 pixels, 2 steps: 0, 2, 4 pixels changed.
        let img = [1.0f32, 2.0, 3.0, 4.0];
        let o = order(&[0.0, 1.0, 3.0, 2.0]); // 2, 3, 1, 0
        let del = fill_curve(&img, 4, &o, &proto(2), false);
        assert_eq!(
            del,
            vec![1., 2., 3., 4., 1., 2., 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
        );
        let ins = fill_curve(&img, 4, &o, &proto(2), true);
        assert_eq!(
            ins,
            vec![0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 3., 4., 1., 2., 3., 4.]
        );
    }

    #[test]
    fn area_under_a_curve_by_hand() {
        assert!((auc(&[1.0, 0.5, 0.0]) - 0.5).abs() < 1e-12);
        assert!((auc(&[0.0, 1.0, 1.0]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn imputation_of_one_pixel_is_its_neighbours_weighted_mean() {
        // 3x3, the centre removed: sides 1/6 each, corners 1/12 each.
        let img = [1f32, 2., 3., 4., 100., 6., 7., 8., 9.];
        let mut removed = [false; 9];
        removed[4] = true;
        let out = impute(&img, 3, 3, &removed);
        let want = (2. + 4. + 6. + 8.) / 6. + (1. + 3. + 7. + 9.) / 12.;
        assert!((out[4] - want).abs() < 1e-5, "{} vs {want}", out[4]);
        assert_eq!(&out[..4], &img[..4]);
    }

    #[test]
    fn imputation_fills_a_linear_ramp_exactly_and_keeps_the_rest() {
        // A ramp along the columns is harmonic for symmetric weights: the
        // removed block in the middle comes back as it was.
        let (r, c) = (6, 7);
        let img: Vec<f32> = (0..r * c).map(|i| (i % c) as f32 * 0.1).collect();
        let mut removed = vec![false; r * c];
        for row in 1..5 {
            for col in 2..5 {
                removed[row * c + col] = true;
            }
        }
        let out = impute(&img, r, c, &removed);
        for i in 0..r * c {
            assert!(
                (out[i] - img[i]).abs() < 1e-4,
                "pixel {i}: {} vs {}",
                out[i],
                img[i]
            );
        }
    }

    #[test]
    fn a_map_that_follows_the_model_scores_better_than_its_reverse() {
        // "Model": the probability is the mean of the first half of the
        // pixels. A map ranking those first is faithful; its negation is not.
        let (r, c) = (4, 4);
        let img = vec![1f32; r * c];
        let good: Vec<f32> = (0..16).map(|i| if i < 8 { 1.0 } else { 0.0 }).collect();
        let bad: Vec<f32> = good.iter().map(|v| -v).collect();
        let p = Protocol {
            steps: 4,
            fill: vec![0.0],
            noise: 0.0,
        };
        let mut model = |x: Vec<f32>, n: usize| {
            Ok((0..n)
                .map(|k| x[k * 16..k * 16 + 8].iter().sum::<f32>() / 8.0)
                .collect())
        };
        let mut rng = Rng::new(1);
        let g = score_image(&img, r, c, &good, &p, &mut rng, &mut model).unwrap();
        let b = score_image(&img, r, c, &bad, &p, &mut rng, &mut model).unwrap();
        // Deletion of the good order: 1, 0.5, 0, 0, 0 -> AUC 1 / 4.
        assert!((g.deletion - 0.25).abs() < 1e-9, "{g:?}");
        assert!(
            g.deletion < b.deletion && g.insertion > b.insertion,
            "{g:?} {b:?}"
        );
    }
}
