//! The GCM scoring op: "tile, multiply, average" as one fused operation.
//!
//! `score[b, j] = 1/(R*C*D) * sum_{r,c,d} CWM[b, j, r, c] * I[b, d, r, c]`
//! `            = 1/(R*C*D) * sum_{r,c}   CWM[b, j, r, c] * S[b, r, c]`, `S = sum_d I`.
//!
//! The fused form reads each class map once and the channel-summed image once;
//! it never materialises the tiled weights or the CCM. The CPU implementation
//! here is the reference that every other implementation (the CUDA kernel, the
//! daemon's evidence check) is compared against.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Class scores `[B, N]` from class weight maps `[B, N, R, C]` and the (scaled)
/// image `[B, D, R, C]`. Differentiable with respect to both inputs.
pub fn gcm_score(cwm: &Tensor, image: &Tensor) -> Result<Tensor> {
    check_shapes(cwm, image)?;
    let cwm = cwm.contiguous()?;
    let image = image.contiguous()?;
    cwm.apply_op2(&image, GcmScore)
}

/// Class contribution maps `[B, N, D, R, C]`: `CCM_j = tile(CWM_j) x image`.
/// Only needed for evidence that is written out; scoring never builds it.
pub fn ccm(cwm: &Tensor, image: &Tensor) -> Result<Tensor> {
    check_shapes(cwm, image)?;
    cwm.unsqueeze(2)?.broadcast_mul(&image.unsqueeze(1)?)
}

fn check_shapes(cwm: &Tensor, image: &Tensor) -> Result<()> {
    let (b, _, r, c) = cwm.dims4()?;
    let (bi, _, ri, ci) = image.dims4()?;
    if (b, r, c) != (bi, ri, ci) {
        candle_core::bail!(
            "gcm_score: CWM {:?} and image {:?} disagree on batch or size",
            cwm.dims(),
            image.dims()
        )
    }
    if cwm.dtype() != image.dtype() {
        candle_core::bail!(
            "gcm_score: CWM is {:?}, image is {:?}",
            cwm.dtype(),
            image.dtype()
        )
    }
    Ok(())
}

/// The fused scoring op (see the module docs).
pub(crate) struct GcmScore;

/// Dimensions of one scoring problem.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScoreDims {
    pub b: usize,
    pub n: usize,
    pub d: usize,
    /// `R * C`.
    pub hw: usize,
}

impl ScoreDims {
    fn of(l1: &Layout, l2: &Layout) -> Result<Self> {
        let (b, n, r, c) = l1.shape().dims4()?;
        let (_, d, _, _) = l2.shape().dims4()?;
        Ok(ScoreDims { b, n, d, hw: r * c })
    }
}

/// Reference CPU kernel on contiguous slices: `out[b*n]`.
pub(crate) fn score_cpu<T>(cwm: &[T], img: &[T], dims: ScoreDims) -> Vec<T>
where
    T: num_like::Float,
{
    let ScoreDims { b, n, d, hw } = dims;
    let inv = T::from_f64(1.0 / (hw * d) as f64);
    let per_batch = |bi: usize| -> Vec<T> {
        // Channel sum once.
        let img_b = &img[bi * d * hw..(bi + 1) * d * hw];
        let mut s = img_b[..hw].to_vec();
        for ch in 1..d {
            for (acc, &v) in s.iter_mut().zip(&img_b[ch * hw..(ch + 1) * hw]) {
                *acc = *acc + v;
            }
        }
        // One dot per class, accumulated in f64 for a stable reference.
        (0..n)
            .map(|j| {
                let m = &cwm[(bi * n + j) * hw..(bi * n + j + 1) * hw];
                let dot: f64 = m
                    .iter()
                    .zip(&s)
                    .map(|(&w, &x)| w.to_f64() * x.to_f64())
                    .sum();
                T::from_f64(dot) * inv
            })
            .collect()
    };
    if b * n * hw >= 1 << 16 {
        (0..b).into_par_iter().flat_map_iter(per_batch).collect()
    } else {
        (0..b).flat_map(per_batch).collect()
    }
}

fn contiguous_slice<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("gcm_score: input is not contiguous"),
    }
}

impl CustomOp2 for GcmScore {
    fn name(&self) -> &'static str {
        "gcm-score"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = ScoreDims::of(l1, l2)?;
        let shape = Shape::from((dims.b, dims.n));
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(score_cpu(
                contiguous_slice(a, l1)?,
                contiguous_slice(b, l2)?,
                dims,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(score_cpu(
                contiguous_slice(a, l1)?,
                contiguous_slice(b, l2)?,
                dims,
            )),
            _ => candle_core::bail!(
                "gcm_score on CPU supports f32 and f64, got {:?}",
                s1.dtype()
            ),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        cwm: &Tensor,
        image: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, n, r, c) = cwm.dims4()?;
        let d = image.dim(1)?;
        let inv = 1.0 / (r * c * d) as f64;
        let g = (grad.reshape((b, n, 1, 1))? * inv)?;
        // d score_j / d CWM_j(r,c) = S(r,c) / (RCD)
        let s = image.sum_keepdim(1)?;
        let grad_cwm = g.broadcast_mul(&s)?;
        // d score_j / d I(d,r,c) = CWM_j(r,c) / (RCD), summed over classes, tiled over D
        let grad_img = cwm
            .broadcast_mul(&g)?
            .sum_keepdim(1)?
            .broadcast_as((b, d, r, c))?
            .contiguous()?;
        Ok((Some(grad_cwm), Some(grad_img)))
    }
}

/// The minimal float interface the reference kernels need.
pub(crate) mod num_like {
    pub trait Float:
        Copy + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
    {
        fn from_f64(v: f64) -> Self;
        fn to_f64(self) -> f64;
    }
    impl Float for f32 {
        fn from_f64(v: f64) -> Self {
            v as f32
        }
        fn to_f64(self) -> f64 {
            self as f64
        }
    }
    impl Float for f64 {
        fn from_f64(v: f64) -> Self {
            v
        }
        fn to_f64(self) -> f64 {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{DType, Device};

    fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn naive(
        cwm: &[f32],
        img: &[f32],
        b: usize,
        n: usize,
        d: usize,
        r: usize,
        c: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0; b * n];
        for bi in 0..b {
            for j in 0..n {
                let mut acc = 0.0f64;
                for di in 0..d {
                    for y in 0..r {
                        for x in 0..c {
                            let w = cwm[((bi * n + j) * r + y) * c + x] as f64;
                            let v = img[((bi * d + di) * r + y) * c + x] as f64;
                            acc += w * v;
                        }
                    }
                }
                out[bi * n + j] = acc / (r * c * d) as f64;
            }
        }
        out
    }

    #[test]
    fn score_equals_mean_of_ccm_and_naive_loop() {
        let mut rng = Rng::new(11);
        for case in 0..40 {
            let b = 1 + rng.below(3);
            let n = 1 + rng.below(16);
            let d = if case % 2 == 0 { 1 } else { 3 };
            let r = 1 + rng.below(13);
            let c = 1 + rng.below(13);
            let cwm = rand(&mut rng, &[b, n, r, c]);
            let img = rand(&mut rng, &[b, d, r, c]);
            let s = gcm_score(&cwm, &img).unwrap().to_vec2::<f32>().unwrap();
            // mean(CCM_j)
            let m = ccm(&cwm, &img)
                .unwrap()
                .flatten_from(2)
                .unwrap()
                .mean(2)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let nv = naive(
                &cwm.flatten_all().unwrap().to_vec1().unwrap(),
                &img.flatten_all().unwrap().to_vec1().unwrap(),
                b,
                n,
                d,
                r,
                c,
            );
            for bi in 0..b {
                for j in 0..n {
                    let (x, y, z) = (s[bi][j], m[bi][j], nv[bi * n + j]);
                    assert!((x - y).abs() < 1e-5, "case {case}: {x} vs mean(CCM) {y}");
                    assert!((x as f64 - z).abs() < 1e-5, "case {case}: {x} vs naive {z}");
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Rng::new(5);
        let (b, n, d, r, c) = (2, 3, 3, 4, 5);
        let cwm0 = rand(&mut rng, &[b, n, r, c]).to_dtype(DType::F64).unwrap();
        let img0 = rand(&mut rng, &[b, d, r, c]).to_dtype(DType::F64).unwrap();
        let wts = rand(&mut rng, &[b, n]).to_dtype(DType::F64).unwrap();
        let loss = |cwm: &Tensor, img: &Tensor| -> Tensor {
            (gcm_score(cwm, img).unwrap() * &wts)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let cv = candle_core::Var::from_tensor(&cwm0).unwrap();
        let iv = candle_core::Var::from_tensor(&img0).unwrap();
        let grads = loss(cv.as_tensor(), iv.as_tensor()).backward().unwrap();
        for (var, other, is_cwm) in [(&cv, &img0, true), (&iv, &cwm0, false)] {
            let g = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for k in (0..base.len()).step_by(7) {
                let eps = 1e-6;
                let mut p = base.clone();
                p[k] += eps;
                let pt = Tensor::from_vec(p, var.shape(), &Device::Cpu).unwrap();
                let mut m = base.clone();
                m[k] -= eps;
                let mt = Tensor::from_vec(m, var.shape(), &Device::Cpu).unwrap();
                let (lp, lm) = if is_cwm {
                    (loss(&pt, other), loss(&mt, other))
                } else {
                    (loss(other, &pt), loss(other, &mt))
                };
                let fd =
                    (lp.to_scalar::<f64>().unwrap() - lm.to_scalar::<f64>().unwrap()) / (2.0 * eps);
                assert!((fd - g[k]).abs() < 1e-7, "grad {k}: {fd} vs {}", g[k]);
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let cwm = Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let img = Tensor::zeros((1, 1, 4, 5), DType::F32, &Device::Cpu).unwrap();
        let e = gcm_score(&cwm, &img).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
    }
}
