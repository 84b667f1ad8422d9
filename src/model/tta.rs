//! Test-time symmetry averaging: the scores averaged over symmetries of the
//! input, with evidence that still reproduces them. `tta: flips` averages
//! over the 4 mirror images (identity, left-right, up-down, both = half
//! turn), `tta: d4` over all 8 flips and quarter turns of a square input.
//! Average only over symmetries the model was trained with: a model trained
//! without quarter turns has never seen a turned cell and scores it as
//! something else (ELPV binary, docs/elpv.md: d4 costs 20 points of
//! accuracy there, flips gains a little). [`Tta::untrained`] names the
//! mismatch from the model card, and the predictor warns of it.
//!
//! Each transform `T` is a permutation of pixels, so the CCM of a
//! transformed input, turned back, is the turned-back CWM times the input:
//! `T^-1(CWM(T x) * T x) = T^-1(CWM(T x)) * x`. The mean of the 8 aligned
//! CCMs is therefore `CWM_avg * x` with `CWM_avg = mean_T T^-1(CWM(T x))`, and
//! its mean is the mean of the scores. With averaging on, the model's output
//! *is* `CWM_avg` and the score computed from it: the evidence, check (a) and
//! `verify` work on it unchanged, and the decision is exactly what the CCM
//! files give back. The cost is 4 (flips) or 8 (d4) forward passes a frame,
//! run as one batch.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which symmetries to average over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The input as it is (the default).
    #[default]
    None,
    /// The 4 mirror images: identity, left-right, up-down, and both (a half
    /// turn). Any input shape.
    Flips,
    /// The 8 symmetries of the square (dihedral group D4): identity, three
    /// quarter turns, and the same after a left-right flip. Square inputs.
    D4,
}

impl Tta {
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flips => "flips",
            Tta::D4 => "d4",
        }
    }

    /// The symmetries averaged over, as [`forward_t`] numbers them.
    fn symmetries(self) -> &'static [usize] {
        match self {
            Tta::None => &[0],
            // Identity, left-right flip, half turn, left-right flip then a
            // half turn (= up-down flip).
            Tta::Flips => &[0, 4, 2, 6],
            Tta::D4 => &[0, 1, 2, 3, 4, 5, 6, 7],
        }
    }

    /// Why averaging over these symmetries does not fit a model, read from
    /// its training configuration (`training.augment` of the model card):
    /// `None` when it was trained with them, or when the card does not say.
    pub fn untrained(self, training: Option<&serde_json::Value>) -> Option<String> {
        let aug = training?.get("augment")?;
        let on = |k: &str| aug.get(k).and_then(|v| v.as_bool());
        let missing: Vec<&str> = match self {
            Tta::None => vec![],
            Tta::Flips => vec!["hflip", "vflip"],
            Tta::D4 => vec!["hflip", "rot90"],
        }
        .into_iter()
        .filter(|k| on(k) == Some(false))
        .collect();
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "tta {} averages over symmetries the model was not trained with (training.augment: {}): \
             it scores inputs it never saw{}",
            self.name(),
            missing.iter().map(|k| format!("{k} false")).collect::<Vec<_>>().join(", "),
            if self == Tta::D4 && on("hflip") != Some(false) && on("vflip") != Some(false) {
                "; tta flips averages over the mirror images it was trained with"
            } else {
                ""
            }
        ))
    }

    /// Refuses a setting the model's input cannot take (D4 turns need R = C).
    pub fn check(self, rows: usize, cols: usize) -> std::result::Result<(), String> {
        if self == Tta::D4 && rows != cols {
            return Err(format!(
                "tta d4 turns the input by quarter turns, which needs a square input; the model takes {cols}x{rows}"
            ));
        }
        Ok(())
    }
}

/// One quarter turn of the last two dimensions.
fn turn(x: &Tensor) -> Result<Tensor> {
    x.transpose(2, 3)?.contiguous()?.flip(&[2])
}

/// Symmetry `t` (0..8): `t / 4` flips left-right first, then `t % 4` turns.
fn forward_t(x: &Tensor, t: usize) -> Result<Tensor> {
    let mut y = if t >= 4 { x.flip(&[3])? } else { x.clone() };
    for _ in 0..t % 4 {
        y = turn(&y)?;
    }
    Ok(y)
}

/// The inverse of [`forward_t`]: `4 - t % 4` more turns, then the flip.
fn inverse_t(y: &Tensor, t: usize) -> Result<Tensor> {
    let mut x = y.clone();
    for _ in 0..(4 - t % 4) % 4 {
        x = turn(&x)?;
    }
    if t >= 4 {
        x = x.flip(&[3])?;
    }
    Ok(x)
}

/// `CWM_avg` of a batch `x` `[B, D, R, C]` over the symmetries of `tta`:
/// `cwm_of` runs once on the K transformed copies stacked along the batch
/// (`[K*B, D, R, C]` in symmetry-major order) and returns their CWMs
/// `[K*B, N, R, C]`.
pub fn averaged_cwm(
    tta: Tta,
    x: &Tensor,
    cwm_of: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    let ts = tta.symmetries();
    let copies = ts
        .iter()
        .map(|&t| forward_t(x, t))
        .collect::<Result<Vec<_>>>()?;
    let cwm = cwm_of(&Tensor::cat(&copies, 0)?)?;
    let mut sum: Option<Tensor> = None;
    for (i, &t) in ts.iter().enumerate() {
        let back = inverse_t(&cwm.narrow(0, i * b, b)?, t)?;
        sum = Some(match sum {
            Some(s) => (s + back)?,
            None => back,
        });
    }
    sum.expect("at least the identity") / ts.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grid(b: usize, d: usize, r: usize) -> Tensor {
        let v: Vec<f32> = (0..b * d * r * r).map(|i| i as f32).collect();
        Tensor::from_vec(v, (b, d, r, r), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_eight_symmetries_are_distinct_and_each_inverse_undoes_its_transform() {
        let x = grid(2, 1, 3);
        let mut seen = Vec::new();
        for t in 0..8 {
            let y = forward_t(&x, t).unwrap();
            let back = inverse_t(&y, t).unwrap();
            assert_eq!(
                back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "t = {t}"
            );
            seen.push(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen.dedup();
        assert_eq!(seen.len(), 8, "the 8 elements of D4 on a 3x3 grid differ");
    }

    /// A "network" whose CWM is the input itself: the aligned average of the
    /// 8 copies is the input again, and a CWM that ignores the input (a
    /// fixed pattern) becomes its symmetrised average.
    #[test]
    fn aligned_averaging_of_an_equivariant_map_gives_the_map_back() {
        let x = grid(2, 1, 4);
        let same = averaged_cwm(Tta::D4, &x, |t| Ok(t.clone())).unwrap();
        let diff = (same - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        let fixed = grid(1, 1, 4);
        let avg = averaged_cwm(Tta::D4, &x.narrow(0, 0, 1).unwrap(), |t| {
            Tensor::cat(&vec![fixed.clone(); t.dim(0)?], 0)
        })
        .unwrap();
        // The symmetrised pattern is invariant under every symmetry.
        for t in 0..8 {
            let y = forward_t(&avg, t).unwrap();
            let d = (y - &avg).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-4, "t = {t}");
        }
    }

    /// On a non-square input the 4 mirror images are distinct, and the
    /// flips average of a fixed pattern is left-right and up-down symmetric
    /// (but not turned: the shape stays R x C).
    #[test]
    fn flips_average_over_the_four_mirror_images_of_any_shape() {
        let v: Vec<f32> = (0..2 * 3 * 5).map(|i| i as f32).collect();
        let x = Tensor::from_vec(v, (2, 1, 3, 5), &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        for &t in Tta::Flips.symmetries() {
            let y = forward_t(&x, t).unwrap();
            assert_eq!(y.dims(), x.dims(), "t = {t}");
            let back = inverse_t(&y, t).unwrap();
            let d = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "t = {t}");
            seen.push(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen.dedup();
        assert_eq!(seen.len(), 4);
        let same = averaged_cwm(Tta::Flips, &x, |t| Ok(t.clone())).unwrap();
        let d = (same - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
        let fixed = x.narrow(0, 0, 1).unwrap();
        let avg = averaged_cwm(Tta::Flips, &fixed, |t| {
            Tensor::cat(&vec![fixed.clone(); t.dim(0)?], 0)
        })
        .unwrap();
        for (dims, name) in [(vec![3], "left-right"), (vec![2], "up-down")] {
            let d = (avg.flip(&dims).unwrap() - &avg)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-4, "{name}");
        }
        // Row 0 of the pattern averaged with row 2 and their mirrors: the
        // first element is the mean of the 4 corners, 0, 4, 10, 14.
        let first = avg.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((first - 7.0).abs() < 1e-5, "{first}");
    }

    #[test]
    fn the_model_card_tells_which_averaging_the_model_was_trained_for() {
        let card = |hflip: bool, vflip: bool, rot90: bool| serde_json::json!({"augment": {"hflip": hflip, "vflip": vflip, "rot90": rot90}});
        let flips_only = card(true, true, false);
        assert_eq!(Tta::Flips.untrained(Some(&flips_only)), None);
        let e = Tta::D4.untrained(Some(&flips_only)).unwrap();
        assert!(e.contains("rot90 false") && e.contains("tta flips"), "{e}");
        assert_eq!(Tta::D4.untrained(Some(&card(true, true, true))), None);
        let e = Tta::Flips
            .untrained(Some(&card(false, false, false)))
            .unwrap();
        assert!(e.contains("hflip false, vflip false"), "{e}");
        assert!(!e.contains("mirror images it was trained with"), "{e}");
        assert_eq!(Tta::None.untrained(Some(&card(false, false, false))), None);
        // A card without a training record (a model from elsewhere): no word.
        assert_eq!(Tta::D4.untrained(None), None);
        assert_eq!(Tta::D4.untrained(Some(&serde_json::json!({}))), None);
    }

    #[test]
    fn non_square_inputs_are_refused_for_d4() {
        assert!(Tta::D4.check(32, 32).is_ok());
        assert!(Tta::None.check(32, 48).is_ok());
        assert!(Tta::Flips.check(32, 48).is_ok());
        let e = Tta::D4.check(32, 48).unwrap_err();
        assert!(e.contains("square") && e.contains("48x32"), "{e}");
    }
}
