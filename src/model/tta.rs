//! Test-time symmetry averaging (`tta: d4`): a square input's scores averaged
//! over its 8 flips and quarter turns, with evidence that still reproduces
//! them.
//!
//! Each transform `T` is a permutation of pixels, so the CCM of a
//! transformed input, turned back, is the turned-back CWM times the input:
//! `T^-1(CWM(T x) * T x) = T^-1(CWM(T x)) * x`. The mean of the 8 aligned
//! CCMs is therefore `CWM_avg * x` with `CWM_avg = mean_T T^-1(CWM(T x))`, and
//! its mean is the mean of the 8 scores. With `tta: d4` the model's output
//! *is* `CWM_avg` and the score computed from it: the evidence, check (a) and
//! `verify` work on it unchanged, and the decision is exactly what the CCM
//! files give back. The cost is 8 forward passes a frame (one batch of 8).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which symmetries to average over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The input as it is (the default).
    #[default]
    None,
    /// The 8 symmetries of the square (dihedral group D4): identity, three
    /// quarter turns, and the same after a left-right flip.
    D4,
}

impl Tta {
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::D4 => "d4",
        }
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

/// `CWM_avg` of a batch `x` `[B, D, R, R]`: `cwm_of` runs once on the 8
/// transformed copies stacked along the batch (`[8B, D, R, R]` in
/// symmetry-major order) and returns their CWMs `[8B, N, R, R]`.
pub fn d4_cwm(x: &Tensor, cwm_of: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let b = x.dim(0)?;
    let copies = (0..8)
        .map(|t| forward_t(x, t))
        .collect::<Result<Vec<_>>>()?;
    let cwm = cwm_of(&Tensor::cat(&copies, 0)?)?;
    let mut sum: Option<Tensor> = None;
    for t in 0..8 {
        let back = inverse_t(&cwm.narrow(0, t * b, b)?, t)?;
        sum = Some(match sum {
            Some(s) => (s + back)?,
            None => back,
        });
    }
    sum.expect("eight symmetries") / 8.0
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
        let same = d4_cwm(&x, |t| Ok(t.clone())).unwrap();
        let diff = (same - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        let fixed = grid(1, 1, 4);
        let avg = d4_cwm(&x.narrow(0, 0, 1).unwrap(), |t| {
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

    #[test]
    fn non_square_inputs_are_refused_for_d4() {
        assert!(Tta::D4.check(32, 32).is_ok());
        assert!(Tta::None.check(32, 48).is_ok());
        let e = Tta::D4.check(32, 48).unwrap_err();
        assert!(e.contains("square") && e.contains("48x32"), "{e}");
    }
}
