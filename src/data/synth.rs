//! A licence-clean synthetic inspection set: electroluminescence (EL) images of
//! solar cells, clean or with a defect.
//!
//! What an EL image of a cell looks like, and what we model:
//! * the cell glows grey; monocrystalline cells are smooth with cut (dark)
//!   corners, polycrystalline cells show grains of slightly different brightness;
//! * busbars are dark stripes across the cell, fingers are faint thin lines
//!   perpendicular to them; the glow falls off towards the edges;
//! * defects are dark: `crack` (thin branching dark lines), `inactive` (a region
//!   cut off by a crack, much darker), `spot` (dark blobs); `ok` cells have none.
//!
//! Every image is a pure function of `(seed, index, size, classes)`, so a set
//! is reproducible and the daemon's synthetic source can make the same frames.

use std::path::Path;

use serde::Serialize;

use super::image_io::save_grey;
use crate::error::{Error, IoContext, Result};
use crate::rng::Rng;

/// The kinds of cell the generator can draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ok,
    Crack,
    Inactive,
    Spot,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Crack, Kind::Inactive, Kind::Ok, Kind::Spot];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Crack => "crack",
            Kind::Inactive => "inactive",
            Kind::Spot => "spot",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s.trim())
    }
}

/// Parses a comma-separated class list such as `ok,crack`; the result is
/// sorted by name (the class order of a folder data set).
pub fn parse_kinds(list: &str) -> std::result::Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let k = Kind::parse(part).ok_or_else(|| {
            format!("unknown class {part:?} (choose from ok, crack, inactive, spot)")
        })?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    if kinds.len() < 2 {
        return Err("at least two classes are needed".into());
    }
    kinds.sort_by_key(|k| k.name());
    Ok(kinds)
}

/// What `generate` wrote (also saved as `synth.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub generator: String,
    pub seed: u64,
    pub count: usize,
    pub size_px: usize,
    pub classes: Vec<Kind>,
    pub per_class: Vec<usize>,
}

/// The class and pixels (row-major grey, `size x size`) of image `index`.
pub fn sample(seed: u64, index: usize, size: usize, kinds: &[Kind]) -> (Kind, Vec<u8>) {
    let kind = kinds[index % kinds.len()];
    let cell_seed = Rng::derive(seed, index as u64).next_u64();
    (kind, render(size, kind, cell_seed))
}

/// Writes `count` images as `out/<class>/<class>_<index>.png` plus `out/synth.json`.
pub fn generate(
    out: &Path,
    count: usize,
    seed: u64,
    size: usize,
    kinds: &[Kind],
) -> Result<Summary> {
    if size < 8 {
        return Err(Error::Usage(format!("--size {size}: at least 8 pixels")));
    }
    if count == 0 {
        return Err(Error::Usage("--count must be at least 1".into()));
    }
    for k in kinds {
        let d = out.join(k.name());
        std::fs::create_dir_all(&d).at(&d)?;
    }
    use rayon::prelude::*;
    (0..count).into_par_iter().try_for_each(|i| {
        let (kind, px) = sample(seed, i, size, kinds);
        let p = out
            .join(kind.name())
            .join(format!("{}_{i:05}.png", kind.name()));
        save_grey(&p, size, size, px)
    })?;
    let per_class = (0..kinds.len())
        .map(|k| (0..count).filter(|i| i % kinds.len() == k).count())
        .collect();
    let summary = Summary {
        generator: format!("gcm-inspect synth {}", env!("CARGO_PKG_VERSION")),
        seed,
        count,
        size_px: size,
        classes: kinds.to_vec(),
        per_class,
    };
    let p = out.join("synth.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&summary).expect("serialises")).at(&p)?;
    Ok(summary)
}

/// A float canvas in [0, 1].
struct Canvas {
    n: usize,
    v: Vec<f32>,
}

impl Canvas {
    fn at(&mut self, x: usize, y: usize) -> &mut f32 {
        &mut self.v[y * self.n + x]
    }

    /// Calls `f` with each pixel and its centre `(x + 0.5, y + 0.5)`, row
    /// by row.
    fn each(&mut self, mut f: impl FnMut(&mut f32, f32, f32)) {
        for (i, v) in self.v.iter_mut().enumerate() {
            let (x, y) = (i % self.n, i / self.n);
            f(v, x as f32 + 0.5, y as f32 + 0.5);
        }
    }
}

/// Smooth value noise on a `g x g` lattice, bilinear, in [-1, 1].
fn value_noise(rng: &mut Rng, n: usize, g: usize) -> Vec<f32> {
    let lat: Vec<f32> = (0..(g + 1) * (g + 1))
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    let mut out = vec![0.0; n * n];
    for y in 0..n {
        for x in 0..n {
            let fx = x as f32 / n as f32 * g as f32;
            let fy = y as f32 / n as f32 * g as f32;
            let (ix, iy) = (fx as usize, fy as usize);
            let (tx, ty) = (fx - ix as f32, fy - iy as f32);
            let (tx, ty) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
            let l = |a: usize, b: usize| lat[b * (g + 1) + a];
            let top = l(ix, iy) * (1.0 - tx) + l(ix + 1, iy) * tx;
            let bot = l(ix, iy + 1) * (1.0 - tx) + l(ix + 1, iy + 1) * tx;
            out[y * n + x] = top * (1.0 - ty) + bot * ty;
        }
    }
    out
}

/// A line segment between two points.
type Segment = ((f32, f32), (f32, f32));

/// Distance from point p to segment ab.
fn seg_dist(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let l2 = dx * dx + dy * dy;
    let t = if l2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx, a.1 + t * dy);
    ((p.0 - qx).powi(2) + (p.1 - qy).powi(2)).sqrt()
}

/// A crack: a jittery random walk from `start` with heading `angle`, with branches.
fn crack_segments(rng: &mut Rng, n: f32, start: (f32, f32), angle: f32, len: f32) -> Vec<Segment> {
    let mut segs = Vec::new();
    let mut stack = vec![(start, angle, len, 0)];
    while let Some((mut p, mut a, l, depth)) = stack.pop() {
        let step = (n / 24.0).max(1.5);
        let steps = (l / step).ceil() as usize;
        for _ in 0..steps {
            a += rng.range(-0.3, 0.3) as f32;
            let q = (p.0 + step * a.cos(), p.1 + step * a.sin());
            segs.push((p, q));
            p = q;
            if depth < 2 && rng.bool(0.06) {
                let side = if rng.bool(0.5) { 1.0 } else { -1.0 };
                stack.push((p, a + side * rng.range(0.5, 1.1) as f32, l * 0.4, depth + 1));
            }
            if p.0 < -2.0 || p.1 < -2.0 || p.0 > n + 2.0 || p.1 > n + 2.0 {
                break;
            }
        }
    }
    segs
}

/// Darkens pixels near the segments: `v *= 1 - depth * profile(distance)`.
fn draw_segments(c: &mut Canvas, segs: &[Segment], width: f32, depth: f32) {
    let n = c.n;
    for y in 0..n {
        for x in 0..n {
            let p = (x as f32 + 0.5, y as f32 + 0.5);
            let d = segs
                .iter()
                .map(|&(a, b)| seg_dist(p, a, b))
                .fold(f32::INFINITY, f32::min);
            if d < width + 1.0 {
                let prof = (1.0 - (d - width * 0.5).max(0.0)).clamp(0.0, 1.0);
                *c.at(x, y) *= 1.0 - depth * prof;
            }
        }
    }
}

/// Draws one cell. The cell, its defect and the sensor noise come from three
/// streams of `cell_seed`, so the same cell can be drawn with and without a defect.
fn render(n: usize, kind: Kind, cell_seed: u64) -> Vec<u8> {
    let mut c = draw_cell(n, &mut Rng::derive(cell_seed, 0));
    let rng = &mut Rng::derive(cell_seed, 1);
    match kind {
        Kind::Ok => {}
        Kind::Crack => draw_crack(&mut c, rng),
        Kind::Inactive => draw_inactive(&mut c, rng),
        Kind::Spot => draw_spots(&mut c, rng),
    }
    sense(&c, &mut Rng::derive(cell_seed, 2))
}

/// A defect-free cell: texture, vignetting, busbars and fingers, and the
/// cut corners of a monocrystalline wafer.
fn draw_cell(n: usize, rng: &mut Rng) -> Canvas {
    let mono = rng.bool(0.5);
    let base = rng.range(0.5, 0.72) as f32;
    let mut c = Canvas {
        n,
        v: vec![base; n * n],
    };
    // Texture: grains (poly) or smooth swirls (mono).
    if mono {
        let lf = value_noise(rng, n, 3);
        let amp = rng.range(0.02, 0.06) as f32;
        for (v, t) in c.v.iter_mut().zip(lf) {
            *v *= 1.0 + amp * t;
        }
    } else {
        draw_grains(&mut c, rng);
    }
    draw_vignetting(&mut c, rng);
    draw_busbars(&mut c, rng);
    // Monocrystalline wafers have cut corners: dark outside a circle.
    if mono {
        let nf = n as f32;
        let r = nf * rng.range(0.66, 0.74) as f32;
        c.each(|c, x, y| {
            let (dx, dy) = (x - nf / 2.0, y - nf / 2.0);
            if (dx * dx + dy * dy).sqrt() > r {
                *c = 0.06;
            }
        });
    }
    c
}

/// Multicrystalline grains: a brightness offset per Voronoi cell of random
/// seeds, darker at the grain boundaries.
fn draw_grains(c: &mut Canvas, rng: &mut Rng) {
    let nf = c.n as f32;
    let k = rng.range(12.0, 36.0) as usize;
    let seeds: Vec<(f32, f32, f32)> = (0..k)
        .map(|_| {
            (
                rng.range(0.0, nf as f64) as f32,
                rng.range(0.0, nf as f64) as f32,
                (rng.normal() * 0.07) as f32,
            )
        })
        .collect();
    let edge = rng.range(0.02, 0.06) as f32;
    c.each(|v, px, py| {
        let (mut d1, mut d2, mut off) = (f32::INFINITY, f32::INFINITY, 0.0);
        for &(sx, sy, o) in &seeds {
            let d = ((px - sx).powi(2) + (py - sy).powi(2)).sqrt();
            if d < d1 {
                d2 = d1;
                d1 = d;
                off = o;
            } else if d < d2 {
                d2 = d;
            }
        }
        let boundary = if d2 - d1 < 1.0 { edge } else { 0.0 };
        *v *= 1.0 + off - boundary;
    });
}

/// Vignetting: the glow falls off towards the edges.
fn draw_vignetting(c: &mut Canvas, rng: &mut Rng) {
    let nf = c.n as f32;
    let vig = rng.range(0.08, 0.2) as f32;
    c.each(|v, px, py| {
        let dx = px / nf * 2.0 - 1.0;
        let dy = py / nf * 2.0 - 1.0;
        *v *= 1.0 - vig * (dx * dx + dy * dy) * 0.5;
    });
}

/// Busbars (dark stripes) and fingers (faint lines), horizontal or vertical.
fn draw_busbars(c: &mut Canvas, rng: &mut Rng) {
    let (n, nf) = (c.n, c.n as f32);
    let vertical = rng.bool(0.5);
    let bars = 2 + rng.below(2);
    let bar_w = (nf / 48.0).max(1.0);
    let finger_gap = (nf / 14.0).max(3.0) as usize;
    for y in 0..n {
        for x in 0..n {
            let (along, across) = if vertical { (x, y) } else { (y, x) };
            let mut f = 1.0;
            for b in 0..bars {
                let pos = nf * (b as f32 + 1.0) / (bars as f32 + 1.0);
                if (along as f32 + 0.5 - pos).abs() < bar_w {
                    f *= 0.35;
                }
            }
            if across % finger_gap == finger_gap / 2 {
                f *= 0.94;
            }
            *c.at(x, y) *= f;
        }
    }
}

/// A branching crack in two directions from a random start.
fn draw_crack(c: &mut Canvas, rng: &mut Rng) {
    let nf = c.n as f32;
    let start = (
        rng.range(0.15, 0.85) as f32 * nf,
        rng.range(0.15, 0.85) as f32 * nf,
    );
    let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
    let len = nf * rng.range(0.3, 0.7) as f32;
    let mut segs = crack_segments(rng, nf, start, angle, len);
    let back = angle + std::f32::consts::PI;
    segs.extend(crack_segments(rng, nf, start, back, len * 0.6));
    let depth = rng.range(0.45, 0.75) as f32;
    draw_segments(c, &segs, (nf / 150.0).max(0.8), depth);
}

/// A crack from one edge to a neighbouring edge isolates a dark corner region.
fn draw_inactive(c: &mut Canvas, rng: &mut Rng) {
    let nf = c.n as f32;
    let corner = rng.below(4);
    let (a, b) = (
        rng.range(0.25, 0.7) as f32 * nf,
        rng.range(0.25, 0.7) as f32 * nf,
    );
    let (p, q) = match corner {
        0 => ((a, 0.0), (0.0, b)),
        1 => ((nf - a, 0.0), (nf, b)),
        2 => ((0.0, nf - b), (a, nf)),
        _ => ((nf, nf - b), (nf - a, nf)),
    };
    let cx = if corner.is_multiple_of(2) { 0.0 } else { nf };
    let cy = if corner < 2 { 0.0 } else { nf };
    let dark = rng.range(0.3, 0.6) as f32;
    let side = |x: f32, y: f32| (q.0 - p.0) * (y - p.1) - (q.1 - p.1) * (x - p.0);
    let corner_side = side(cx, cy).signum();
    c.each(|v, x, y| {
        if side(x, y).signum() == corner_side {
            *v *= 1.0 - dark;
        }
    });
    draw_segments(c, &[(p, q)], (nf / 64.0).max(0.8), 0.5);
}

/// One to three dark Gaussian spots.
fn draw_spots(c: &mut Canvas, rng: &mut Rng) {
    let nf = c.n as f32;
    let spots = 1 + rng.below(3);
    for _ in 0..spots {
        let (sx, sy) = (
            rng.range(0.15, 0.85) as f32 * nf,
            rng.range(0.15, 0.85) as f32 * nf,
        );
        let r = nf * rng.range(0.04, 0.09) as f32;
        let depth = rng.range(0.35, 0.65) as f32;
        c.each(|v, x, y| {
            let d2 = (x - sx).powi(2) + (y - sy).powi(2);
            *v *= 1.0 - depth * (-d2 / (2.0 * r * r)).exp();
        });
    }
}

/// The sensor: global gain and noise, quantised to 8 bits.
fn sense(c: &Canvas, rng: &mut Rng) -> Vec<u8> {
    let gain = rng.range(0.9, 1.1) as f32;
    let noise = rng.range(0.01, 0.03);
    c.v.iter()
        .map(|&v| {
            let v = v * gain + (rng.normal() * noise) as f32;
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_image_other_seed_other_image() {
        let k = [Kind::Ok, Kind::Crack];
        assert_eq!(sample(3, 5, 32, &k), sample(3, 5, 32, &k));
        assert_ne!(sample(3, 5, 32, &k).1, sample(4, 5, 32, &k).1);
    }

    #[test]
    fn a_defect_darkens_its_cell_and_never_brightens_it() {
        for seed in 0..20 {
            let ok = render(48, Kind::Ok, seed);
            for k in [Kind::Crack, Kind::Inactive, Kind::Spot] {
                let bad = render(48, k, seed);
                // Same cell, same noise: only the defect differs, and it is dark.
                assert!(
                    ok.iter().zip(&bad).all(|(o, b)| b <= o),
                    "{k:?} brightened a pixel"
                );
                let darker = ok.iter().zip(&bad).filter(|(o, b)| *o > *b).count();
                assert!(
                    darker >= 10,
                    "{k:?} seed {seed}: only {darker} pixels darker"
                );
            }
        }
    }

    #[test]
    fn parse_kinds_sorts_and_refuses_unknown() {
        assert_eq!(parse_kinds("spot,ok").unwrap(), vec![Kind::Ok, Kind::Spot]);
        assert!(parse_kinds("ok,scratch").unwrap_err().contains("scratch"));
        assert!(parse_kinds("ok").is_err());
    }
}
