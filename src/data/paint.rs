//! Thin cracks painted on clean cells, for pretraining (docs/elpv.md,
//! sixteenth round). A crack is a nearly straight walk across the cell (3
//! pixel steps, the heading turning by N(0, 0.03) radians a step) from a
//! point in the middle 80% of the cell in both directions, 30-300 pixels in
//! all (at a 300-pixel cell; lengths scale with the cell's smaller side),
//! stopping at the edge, with a side branch of 10-60 pixels at 0.4-1.2
//! radians with probability 0.3. Painting multiplies the pixels within half
//! the crack's width by `1 - depth`, fading to nothing over one more pixel.

use image::{GrayImage, Luma};

use crate::rng::Rng;

/// Crack strengths, one drawn per cell: (width min, max in pixels, depth
/// min, max as a share of the pixel value).
pub const STRENGTHS: [(&str, f64, f64, f64, f64); 3] = [
    ("strong", 2.5, 4.0, 0.6, 0.9),
    ("medium", 1.5, 3.0, 0.3, 0.6),
    ("faint", 1.0, 2.5, 0.1, 0.4),
];

/// Points of one line, in pixel coordinates (x right, y down).
pub type Polyline = Vec<(f64, f64)>;

/// One painted crack: its lines, width (pixels) and depth.
#[derive(Clone, Debug)]
pub struct Crack {
    pub lines: Vec<Polyline>,
    pub width: f64,
    pub depth: f64,
}

fn walk(rng: &mut Rng, start: (f64, f64), heading: f64, length: f64, w: f64, h: f64) -> Polyline {
    let (mut x, mut y, mut th) = (start.0, start.1, heading);
    let mut pts = vec![(x, y)];
    let steps = ((length / 3.0) as usize).max(1);
    for _ in 0..steps {
        th += 0.03 * rng.normal();
        x += 3.0 * th.cos();
        y += 3.0 * th.sin();
        if !((0.0..w).contains(&x) && (0.0..h).contains(&y)) {
            break;
        }
        pts.push((x, y));
    }
    pts
}

/// The lines of one crack on a `w x h` cell (see the module docs).
pub fn crack_lines(rng: &mut Rng, w: u32, h: u32) -> Vec<Polyline> {
    use std::f64::consts::PI;
    let (w, h) = (w as f64, h as f64);
    let scale = w.min(h) / 300.0;
    let start = (rng.range(0.1 * w, 0.9 * w), rng.range(0.1 * h, 0.9 * h));
    let th = rng.range(0.0, 2.0 * PI);
    let total = rng.range(30.0, 300.0) * scale;
    let a = rng.f64();
    let forward = walk(rng, start, th, total * a, w, h);
    let back = walk(rng, start, th + PI, total * (1.0 - a), w, h);
    let mut main: Polyline = back.into_iter().rev().collect();
    main.extend_from_slice(&forward[1..]);
    let mut lines = vec![main];
    if rng.bool(0.3) && lines[0].len() > 2 {
        let from = lines[0][rng.below(lines[0].len())];
        let side = if rng.bool(0.5) { 1.0 } else { -1.0 };
        let heading = th + side * rng.range(0.4, 1.2);
        let length = rng.range(10.0, 60.0) * scale;
        lines.push(walk(rng, from, heading, length, w, h));
    }
    lines
}

/// One or (with probability 0.2) two cracks of one strength, drawn from
/// [`STRENGTHS`]; returns them and the strength's index.
pub fn draw_cracks(rng: &mut Rng, w: u32, h: u32) -> (Vec<Crack>, usize) {
    let k = rng.below(STRENGTHS.len());
    let (_, wmin, wmax, dmin, dmax) = STRENGTHS[k];
    let n = if rng.bool(0.2) { 2 } else { 1 };
    let cracks = (0..n)
        .map(|_| {
            let lines = crack_lines(rng, w, h);
            Crack {
                lines,
                width: rng.range(wmin, wmax),
                depth: rng.range(dmin, dmax),
            }
        })
        .collect();
    (cracks, k)
}

/// `img` with `cracks` painted: each pixel times `1 - depth * m`, `m` 1
/// within half the width of a line and falling to 0 over one more pixel;
/// where cracks overlap the darker factor wins.
pub fn paint(img: &GrayImage, cracks: &[Crack]) -> GrayImage {
    let (w, h) = img.dimensions();
    let mut factor = vec![1f64; w as usize * h as usize];
    for c in cracks {
        let half = c.width / 2.0;
        let reach = half + 1.0;
        for line in &c.lines {
            for seg in line.windows(2) {
                let ((x0, y0), (x1, y1)) = (seg[0], seg[1]);
                let lo = |a: f64, b: f64| (a.min(b) - reach).floor().max(0.0) as u32;
                let hi = |a: f64, b: f64, n: u32| ((a.max(b) + reach).ceil() as u32).min(n - 1);
                let (vx, vy) = (x1 - x0, y1 - y0);
                let len2 = vx * vx + vy * vy;
                for py in lo(y0, y1)..=hi(y0, y1, h) {
                    for px in lo(x0, x1)..=hi(x0, x1, w) {
                        let (qx, qy) = (px as f64, py as f64);
                        let t = if len2 > 0.0 {
                            (((qx - x0) * vx + (qy - y0) * vy) / len2).clamp(0.0, 1.0)
                        } else {
                            0.0
                        };
                        let d = (qx - (x0 + t * vx)).hypot(qy - (y0 + t * vy));
                        let m = (1.0 - (d - half)).clamp(0.0, 1.0);
                        let i = py as usize * w as usize + px as usize;
                        factor[i] = factor[i].min(1.0 - c.depth * m);
                    }
                }
            }
        }
    }
    GrayImage::from_fn(w, h, |x, y| {
        let f = factor[y as usize * w as usize + x as usize];
        Luma([(img.get_pixel(x, y)[0] as f64 * f)
            .round()
            .clamp(0.0, 255.0) as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_darkens_by_the_depth_within_half_the_width_and_fades_over_one_pixel() {
        let img = GrayImage::from_pixel(40, 30, Luma([200]));
        let c = Crack {
            lines: vec![vec![(5.0, 10.0), (35.0, 10.0)]],
            width: 2.0,
            depth: 0.5,
        };
        let out = paint(&img, &[c]);
        // On the line and within half the width: 200 * (1 - 0.5).
        assert_eq!(out.get_pixel(20, 10)[0], 100);
        assert_eq!(out.get_pixel(20, 11)[0], 100);
        // At 1.5 px from the line m = 0.5: 200 * (1 - 0.25); not on the grid,
        // so check the row two away (m = 0) and past the segment's end.
        assert_eq!(out.get_pixel(20, 12)[0], 200);
        assert_eq!(out.get_pixel(20, 8)[0], 200);
        assert_eq!(out.get_pixel(37, 10)[0], 200);
        assert_eq!(out.get_pixel(36, 10)[0], 100);
        // A diagonal: pixel (21, 20) is 1/sqrt(2) from the line through
        // (10, 10)-(30, 30), inside half of width 2.
        let c = Crack {
            lines: vec![vec![(10.0, 10.0), (30.0, 30.0)]],
            width: 2.0,
            depth: 0.5,
        };
        let out = paint(&img, &[c]);
        assert_eq!(out.get_pixel(21, 20)[0], 100);
        // 3/sqrt(2) = 2.12 px away: m = 1 - 1.12 < 0, untouched.
        assert_eq!(out.get_pixel(23, 20)[0], 200);
        // 2/sqrt(2) = 1.41 px: m = 0.59, 200 * (1 - 0.5 * 0.59) = 141.
        assert_eq!(out.get_pixel(22, 20)[0], 141);
    }

    #[test]
    fn cracks_stay_on_the_cell_and_are_repeatable() {
        for seed in 0..50 {
            let (a, ka) = draw_cracks(&mut Rng::new(seed), 300, 300);
            let (b, kb) = draw_cracks(&mut Rng::new(seed), 300, 300);
            assert_eq!(ka, kb);
            assert_eq!(a.len(), b.len());
            for (ca, cb) in a.iter().zip(&b) {
                assert_eq!(ca.lines, cb.lines);
                let (_, wmin, wmax, dmin, dmax) = STRENGTHS[ka];
                assert!((wmin..wmax).contains(&ca.width) && (dmin..dmax).contains(&ca.depth));
                for line in &ca.lines {
                    for &(x, y) in line {
                        assert!((0.0..300.0).contains(&x) && (0.0..300.0).contains(&y));
                    }
                    // Steps of 3 pixels.
                    for s in line.windows(2) {
                        let d = (s[1].0 - s[0].0).hypot(s[1].1 - s[0].1);
                        assert!((d - 3.0).abs() < 1e-9, "step {d}");
                    }
                }
            }
        }
    }
}
