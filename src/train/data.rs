//! Augmentation and batches of training images.

use candle_core::{Device, Tensor};

use super::config::Augment;
use crate::data::image_io::{unit, Planar};
use crate::data::ImageSet;
use crate::error::Result;
use crate::rng::Rng;

/// Writes one augmented copy of `img` (values in [0, 1]) into `out`.
///
/// The output pixel `(y, x)` reads the padded, flipped, rotated image at the
/// crop offset, times the exposure gain plus the brightness offset, clamped
/// to [0, 1]; pixels from the zero padding are 0.
pub fn augment_into(img: &Planar, aug: &Augment, rng: &mut Rng, out: &mut Vec<f32>) {
    let (r, c, d) = (img.rows, img.cols, img.channels);
    let k = if aug.rot90 && r == c { rng.below(4) } else { 0 };
    let hflip = aug.hflip && rng.bool(0.5);
    let vflip = aug.vflip && rng.bool(0.5);
    // Drawn only when on, so that configs without them keep their stream.
    let gain = if aug.exposure > 0.0 {
        rng.range(1.0 - aug.exposure as f64, 1.0 + aug.exposure as f64) as f32
    } else {
        1.0
    };
    let offset = if aug.brightness > 0.0 {
        rng.range(-aug.brightness as f64, aug.brightness as f64) as f32
    } else {
        0.0
    };
    let photometric = gain != 1.0 || offset != 0.0;
    let p = aug.pad_crop_px as isize;
    let (dy, dx) = if p > 0 {
        (
            rng.below(2 * p as usize + 1) as isize - p,
            rng.below(2 * p as usize + 1) as isize - p,
        )
    } else {
        (0, 0)
    };
    let n = r as isize; // square when k != 0
    for ch in 0..d {
        let plane = &img.data[ch * r * c..(ch + 1) * r * c];
        for y in 0..r as isize {
            for x in 0..c as isize {
                let (mut y1, mut x1) = (y + dy, x + dx);
                if y1 < 0 || x1 < 0 || y1 >= r as isize || x1 >= c as isize {
                    out.push(0.0);
                    continue;
                }
                if hflip {
                    x1 = c as isize - 1 - x1;
                }
                if vflip {
                    y1 = r as isize - 1 - y1;
                }
                let (ys, xs) = match k {
                    0 => (y1, x1),
                    1 => (x1, n - 1 - y1),
                    2 => (n - 1 - y1, n - 1 - x1),
                    _ => (n - 1 - x1, y1),
                };
                let v = unit(plane[ys as usize * c + xs as usize]);
                out.push(if photometric {
                    (gain * v + offset).clamp(0.0, 1.0)
                } else {
                    v
                });
            }
        }
    }
}

/// An inverted-dropout mask of `dims`' size: each value is 0 with
/// probability `p`, else `1 / (1 - p)`, so the expectation is 1.
pub fn dropout_mask(dims: &[usize], p: f64, rng: &mut Rng) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let keep = (1.0 / (1.0 - p)) as f32;
    (0..n)
        .map(|_| if rng.f64() < p { 0.0 } else { keep })
        .collect()
}

/// A batch `[B, D, R, C]` and its labels `[B]` (u32); augmented when `aug` is given.
pub fn batch(
    set: &ImageSet,
    idx: &[usize],
    aug: Option<(&Augment, &mut Rng)>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let first = &set.images[idx[0]];
    let (d, r, c) = (first.channels, first.rows, first.cols);
    let mut v = Vec::with_capacity(idx.len() * d * r * c);
    match aug {
        Some((a, rng)) => {
            for &i in idx {
                augment_into(&set.images[i], a, rng, &mut v);
            }
        }
        None => {
            for &i in idx {
                v.extend(set.images[i].data.iter().copied().map(unit));
            }
        }
    }
    let x = Tensor::from_vec(v, (idx.len(), d, r, c), device)?;
    let labels: Vec<u32> = idx.iter().map(|&i| set.labels[i] as u32).collect();
    let y = Tensor::from_vec(labels, idx.len(), device)?;
    Ok((x, y))
}

/// The soft targets `[B, K]` of the images `idx`; `None` when the set has none.
pub fn targets(set: &ImageSet, idx: &[usize], device: &Device) -> Result<Option<Tensor>> {
    if set.targets.is_empty() {
        return Ok(None);
    }
    let k = set.targets[idx[0]].len();
    let v: Vec<f32> = idx
        .iter()
        .flat_map(|&i| set.targets[i].iter().copied())
        .collect();
    Ok(Some(Tensor::from_vec(v, (idx.len(), k), device)?))
}

/// Mixup (`mixup:`): draws `lam ~ Beta(alpha, alpha)` and a permutation of
/// the batch from `rng`, and returns `lam * x + (1 - lam) * x[perm]` with
/// the same blend of the targets `[B, K]`.
pub fn mixup(x: &Tensor, targets: &Tensor, alpha: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
    let lam = rng.beta(alpha, alpha);
    let n = x.dim(0)?;
    let mut perm: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut perm);
    let p = Tensor::from_vec(perm, n, x.device())?;
    let blend = |t: &Tensor| -> Result<Tensor> {
        Ok(((t * lam)? + (t.index_select(&p, 0)? * (1.0 - lam))?)?)
    };
    Ok((blend(x)?, blend(targets)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> Planar {
        // 3x3 grey: values 1..9 row-major
        Planar {
            channels: 1,
            rows: 3,
            cols: 3,
            data: (1..=9).collect(),
        }
    }

    fn run(aug: &Augment, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        augment_into(&img(), aug, &mut Rng::new(seed), &mut out);
        out.iter().map(|v| (v * 255.0).round() as u8).collect()
    }

    #[test]
    fn no_augmentation_is_identity() {
        let a = Augment {
            hflip: false,
            vflip: false,
            rot90: false,
            pad_crop_px: 0,
            ..Augment::default()
        };
        assert_eq!(run(&a, 1), (1..=9).collect::<Vec<u8>>());
    }

    #[test]
    fn flips_and_rotations_permute_pixels() {
        let a = Augment {
            hflip: true,
            vflip: true,
            rot90: true,
            pad_crop_px: 0,
            ..Augment::default()
        };
        let mut seen = std::collections::HashSet::new();
        for s in 0..200 {
            let mut v = run(&a, s);
            seen.insert(v.clone());
            v.sort();
            assert_eq!(v, (1..=9).collect::<Vec<u8>>());
        }
        // The 8 symmetries of the square.
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn pad_crop_shifts_in_zeros() {
        let a = Augment {
            hflip: false,
            vflip: false,
            rot90: false,
            pad_crop_px: 1,
            ..Augment::default()
        };
        let shifted: Vec<Vec<u8>> = (0..100).map(|s| run(&a, s)).collect();
        assert!(shifted.iter().any(|v| v.contains(&0)));
        assert!(shifted.iter().any(|v| *v == (1..=9).collect::<Vec<u8>>()));
        // A shift never invents values: non-zero pixels come from the image.
        assert!(shifted.iter().flatten().all(|&p| p <= 9));
    }

    #[test]
    fn exposure_and_brightness_are_one_affine_map_per_image() {
        // A 1x4 image with a dark, two mid and a bright pixel.
        let im = Planar {
            channels: 1,
            rows: 1,
            cols: 4,
            data: vec![0, 64, 128, 255],
        };
        let a = Augment {
            hflip: false,
            vflip: false,
            rot90: false,
            pad_crop_px: 0,
            exposure: 0.3,
            brightness: 0.1,
        };
        let (mut gains, mut offsets) = (Vec::new(), Vec::new());
        for s in 0..300 {
            let mut out = Vec::new();
            augment_into(&im, &a, &mut Rng::new(s), &mut out);
            // Recover the map from the two unclamped mid pixels.
            let (x1, x2) = (64.0 / 255.0, 128.0 / 255.0);
            let g = (out[2] - out[1]) / (x2 - x1);
            let o = out[1] - g * x1;
            assert!((0.7 - 1e-4..=1.3 + 1e-4).contains(&g), "gain {g}");
            assert!((-0.1 - 1e-4..=0.1 + 1e-4).contains(&o), "offset {o}");
            // The same map on the ends, clamped to [0, 1].
            assert!((out[0] - o.clamp(0.0, 1.0)).abs() < 1e-5);
            assert!((out[3] - (g + o).clamp(0.0, 1.0)).abs() < 1e-5);
            gains.push(g);
            offsets.push(o);
        }
        // Both spread over their range, not stuck at one end.
        let spread = |v: &[f32]| {
            v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min)
        };
        assert!(spread(&gains) > 0.5, "gains {}", spread(&gains));
        assert!(spread(&offsets) > 0.16, "offsets {}", spread(&offsets));
    }

    #[test]
    fn dropout_mask_zeroes_a_share_p_and_keeps_the_mean() {
        let mut rng = Rng::new(3);
        let m = dropout_mask(&[4, 16, 32, 32], 0.25, &mut rng);
        assert_eq!(m.len(), 4 * 16 * 32 * 32);
        let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "{zeros}");
        assert!(m.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
        let mean = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        // The same stream draws the same mask.
        assert_eq!(m, dropout_mask(&[4, 16, 32, 32], 0.25, &mut Rng::new(3)));
    }

    #[test]
    fn mixup_blends_images_and_targets_with_one_pair_per_image() {
        // Four images with constant values 0, 10, 20, 30 and targets naming
        // them: each blended image must be lam * own + (1 - lam) * partner,
        // its target the same blend of the two one-hot rows, the partners a
        // permutation, and the same stream must draw the same blend.
        let dev = Device::Cpu;
        let x = Tensor::from_vec(
            (0..4)
                .flat_map(|i| [i as f32 * 10.0; 6])
                .collect::<Vec<_>>(),
            (4, 1, 2, 3),
            &dev,
        )
        .unwrap();
        let y = Tensor::from_vec(vec![0u32, 1, 2, 3], 4, &dev).unwrap();
        let t = candle_nn::encoding::one_hot(y, 4, 1f32, 0f32).unwrap();
        let mut seen_blend = false;
        for seed in 0..20 {
            let (xm, tm) = mixup(&x, &t, 0.4, &mut Rng::new(seed)).unwrap();
            let xs = xm.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
            let ts = tm.to_vec2::<f32>().unwrap();
            let mut partners = Vec::new();
            for i in 0..4 {
                let row = &ts[i];
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
                let lam = row[i];
                // The partner holds the rest (or is the image itself).
                let j = if lam > 1.0 - 1e-6 {
                    i
                } else {
                    (0..4).find(|&j| j != i && row[j] > 0.0).unwrap()
                };
                let held = if j == i { row[i] } else { row[i] + row[j] };
                assert!((held - 1.0).abs() < 1e-6, "{row:?}");
                let want = lam * i as f32 * 10.0 + (1.0 - lam) * j as f32 * 10.0;
                assert!(
                    xs[i].iter().all(|&v| (v - want).abs() < 1e-4),
                    "{:?} vs {want}",
                    xs[i]
                );
                partners.push(j);
                seen_blend |= lam > 0.05 && lam < 0.95;
            }
            let mut sorted = partners.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                vec![0, 1, 2, 3],
                "partners {partners:?} are not a permutation"
            );
            let (xm2, _) = mixup(&x, &t, 0.4, &mut Rng::new(seed)).unwrap();
            assert_eq!(xs, xm2.flatten_from(1).unwrap().to_vec2::<f32>().unwrap());
        }
        assert!(seen_blend, "20 draws of Beta(0.4, 0.4) never blended");
    }
}
