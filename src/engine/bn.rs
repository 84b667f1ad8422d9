//! Training-mode BatchNorm (+ ReLU) as one op with its own backward.
//!
//! Written with candle's elementwise ops, BatchNorm in training mode is a
//! dozen passes over the feature map (transpose, reductions, broadcasts) in
//! forward and as many again in backward. Here forward is three passes (mean,
//! variance, normalise + ReLU) and backward two (two per-channel sums, then the
//! input gradient), parallel over channels and planes.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{f32_slice, with_f32};

/// Per-channel mean and biased variance of NCHW `x` (two-pass, `f64` sums).
pub(crate) fn channel_stats(x: &[f32], (b, c, hw): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let n = (b * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(move |bi| &x[(bi * c + ch) * hw..(bi * c + ch + 1) * hw]);
            let sum: f64 = planes().map(|p| p.iter().sum::<f32>() as f64).sum();
            let mean = sum / n;
            let m = mean as f32;
            let ss: f64 = planes()
                .map(|p| p.iter().map(|&v| (v - m) * (v - m)).sum::<f32>() as f64)
                .sum();
            (m, (ss / n) as f32)
        })
        .unzip()
}

/// BatchNorm with the batch statistics `mean` and `1/sqrt(var + eps)`, then ReLU if asked.
#[derive(Clone, Debug)]
struct BnTrain {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "engine-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let gamma = f32_slice(s2, l2, self.name())?;
        let beta = f32_slice(s3, l3, self.name())?;
        let (_, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(bc, (yp, xp))| {
                let ch = bc % c;
                let a = gamma[ch] * self.inv_std[ch];
                let s = beta[ch] - self.mean[ch] * a;
                if self.relu {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = (v * a + s).max(0.0);
                    }
                } else {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = v * a + s;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, h, w) = x.dims4()?;
        let hw = h * w;
        let n = (b * hw) as f32;
        let gam = gamma.to_vec1::<f32>()?;
        let (dx, dgamma, dbeta) = with_f32(x, |x| {
            with_f32(y, |y| {
                with_f32(g, |g| {
                    // g' = g * relu'(y); per channel sum(g') and sum(g' * xhat).
                    let masked = |i: usize| {
                        if self.relu && y[i] <= 0.0 {
                            0.0
                        } else {
                            g[i]
                        }
                    };
                    let (sg, sgx): (Vec<f32>, Vec<f32>) = (0..c)
                        .into_par_iter()
                        .map(|ch| {
                            let (m, is) = (self.mean[ch], self.inv_std[ch]);
                            let mut s = 0f64;
                            let mut sx = 0f64;
                            for bi in 0..b {
                                let base = (bi * c + ch) * hw;
                                let mut ps = 0f32;
                                let mut psx = 0f32;
                                for i in base..base + hw {
                                    let gv = masked(i);
                                    ps += gv;
                                    psx += gv * (x[i] - m) * is;
                                }
                                s += ps as f64;
                                sx += psx as f64;
                            }
                            (s as f32, sx as f32)
                        })
                        .unzip();
                    let mut dx = vec![0f32; x.len()];
                    dx.par_chunks_mut(hw).enumerate().for_each(|(bc, d)| {
                        let ch = bc % c;
                        let (m, is) = (self.mean[ch], self.inv_std[ch]);
                        let k = gam[ch] * is / n;
                        let base = bc * hw;
                        for (j, dv) in d.iter_mut().enumerate() {
                            let i = base + j;
                            let xhat = (x[i] - m) * is;
                            *dv = k * (n * masked(i) - sg[ch] - xhat * sgx[ch]);
                        }
                    });
                    Ok((dx, sgx, sg))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (b, c, h, w), dev)?),
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
    }
}

/// Training-mode BatchNorm over the channels of CPU `f32` NCHW `x`, with ReLU
/// if `relu`. Returns the output and the batch mean and biased variance (for
/// the running statistics).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let x = x.contiguous()?;
    let (b, c, h, w) = x.dims4()?;
    let (mean, var) = with_f32(&x, |xs| Ok(channel_stats(xs, (b, c, h * w))))?;
    let inv_std = var
        .iter()
        .map(|&v| 1.0 / (v as f64 + eps).sqrt() as f32)
        .collect();
    let y = x.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BnTrain {
            mean: mean.clone(),
            inv_std,
            relu,
        },
    )?;
    Ok((y, mean, var))
}
