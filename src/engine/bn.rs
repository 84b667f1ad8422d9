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

const LANES: usize = 16;

/// A new vector of `n` floats, chunk `i` (of `chunk` floats) written in
/// parallel from `f(i)`, without zero-filling it first (the fill would be
/// overwritten; on a batch of feature maps it costs a pass over memory).
/// Panics, before the vector is returned, if an iterator does not give
/// exactly its chunk's length.
fn par_new<I: Iterator<Item = f32>>(
    n: usize,
    chunk: usize,
    f: impl Fn(usize) -> I + Sync,
) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, dst)| {
            let mut it = f(i);
            let mut written = 0;
            for (d, val) in dst.iter_mut().zip(&mut it) {
                d.write(val);
                written += 1;
            }
            assert!(
                written == dst.len() && it.next().is_none(),
                "par_new: chunk {i} has {} floats, its iterator gave another count",
                dst.len()
            );
        });
    // SAFETY: every chunk of the first `n` elements was written in full
    // above (an iterator of another length panics before this line).
    unsafe { v.set_len(n) };
    v
}

/// `(sum(f(a)), sum(g(a)))` over the elements of `a` (and the zipped `b`, `c`),
/// in `LANES` independent partial sums so the compiler vectorises it (one
/// running f32 sum cannot be reordered).
#[inline(always)]
fn lane_sums(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f32, f32) {
    let mut s0 = [0f32; LANES];
    let mut s1 = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let cc = c.chunks_exact(LANES);
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((xa, xb), xc) in ca.zip(cb).zip(cc) {
        for l in 0..LANES {
            let (u, v) = f(xa[l], xb[l], xc[l]);
            s0[l] += u;
            s1[l] += v;
        }
    }
    let (mut t0, mut t1) = (0f32, 0f32);
    for ((&xa, &xb), &xc) in ra.iter().zip(rb).zip(rc) {
        let (u, v) = f(xa, xb, xc);
        t0 += u;
        t1 += v;
    }
    (s0.iter().sum::<f32>() + t0, s1.iter().sum::<f32>() + t1)
}

/// Per-channel mean and biased variance of NCHW `x` (two-pass; per-plane
/// sums in f32, summed over planes in f64).
pub(crate) fn channel_stats(x: &[f32], (b, c, hw): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let n = (b * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(move |bi| &x[(bi * c + ch) * hw..(bi * c + ch + 1) * hw]);
            let sum: f64 = planes()
                .map(|p| lane_sums(p, p, p, |v, _, _| (v, 0.0)).0 as f64)
                .sum();
            let m = (sum / n) as f32;
            let ss: f64 = planes()
                .map(|p| lane_sums(p, p, p, |v, _, _| ((v - m) * (v - m), 0.0)).0 as f64)
                .sum();
            (m, (ss / n) as f32)
        })
        .unzip()
}

/// A batch's normalisation: its per-channel `mean` and `inv_std = 1 /
/// sqrt(var + eps)`, and whether a ReLU follows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BnNorm<'a> {
    pub mean: &'a [f32],
    pub inv_std: &'a [f32],
    pub relu: bool,
}

/// `relu?(x * a + s)` per channel, with `a = gamma / std` and `s = beta -
/// mean * a`: BatchNorm's output for the batch statistics of `norm`. `x`:
/// NCHW with `c` channels of `hw`.
pub(crate) fn bn_apply(
    x: &[f32],
    (c, hw): (usize, usize),
    gamma: &[f32],
    beta: &[f32],
    norm: BnNorm,
) -> Vec<f32> {
    let BnNorm {
        mean,
        inv_std,
        relu,
    } = norm;
    par_new(x.len(), hw, |bc| {
        let ch = bc % c;
        let a = gamma[ch] * inv_std[ch];
        let s = beta[ch] - mean[ch] * a;
        x[bc * hw..(bc + 1) * hw].iter().map(move |&v| {
            let o = v * a + s;
            if relu {
                o.max(0.0)
            } else {
                o
            }
        })
    })
}

/// Backward of [`bn_apply`] with batch statistics: given its input `x`, its
/// output `y` and the output gradient `g`, returns `(dx, dgamma, dbeta)`.
pub(crate) fn bn_backward(
    x: &[f32],
    y: &[f32],
    g: &[f32],
    (b, c, hw): (usize, usize, usize),
    gamma: &[f32],
    norm: BnNorm,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let BnNorm {
        mean,
        inv_std,
        relu,
    } = norm;
    let n = (b * hw) as f32;
    // g' = g * relu'(y); per channel sum(g') and sum(g' * xhat).
    let (sg, sgx): (Vec<f32>, Vec<f32>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let m = mean[ch];
            let mut s = 0f64;
            let mut sx = 0f64;
            for bi in 0..b {
                let r = (bi * c + ch) * hw..(bi * c + ch + 1) * hw;
                let (xs, ys, gs) = (&x[r.clone()], &y[r.clone()], &g[r]);
                let (u, v) = lane_sums(xs, ys, gs, |xv, yv, gv| {
                    let gm = if !relu || yv > 0.0 { gv } else { 0.0 };
                    (gm, gm * (xv - m))
                });
                s += u as f64;
                sx += v as f64;
            }
            (s as f32, (sx * inv_std[ch] as f64) as f32)
        })
        .unzip();
    let dx = par_new(x.len(), hw, |bc| {
        let ch = bc % c;
        let (m, is) = (mean[ch], inv_std[ch]);
        let k = gamma[ch] * is / n;
        let r = bc * hw..(bc + 1) * hw;
        let (xs, ys, gs) = (&x[r.clone()], &y[r.clone()], &g[r]);
        let (a, bsum) = (sg[ch], sgx[ch] * is);
        xs.iter().zip(ys).zip(gs).map(move |((&xv, &yv), &gv)| {
            let gm = if !relu || yv > 0.0 { gv } else { 0.0 };
            k * (n * gm - a - (xv - m) * bsum)
        })
    });
    (dx, sgx, sg)
}

/// `1 / sqrt(var + eps)` per channel.
pub(crate) fn inv_std(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter()
        .map(|&v| 1.0 / (v as f64 + eps).sqrt() as f32)
        .collect()
}

/// BatchNorm with the batch statistics `mean` and `1/sqrt(var + eps)`, then ReLU if asked.
#[derive(Clone, Debug)]
struct BnTrain {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl BnTrain {
    fn norm(&self) -> BnNorm<'_> {
        BnNorm {
            mean: &self.mean,
            inv_std: &self.inv_std,
            relu: self.relu,
        }
    }
}

// The method signatures are candle's `CustomOp3`, the same for every op.
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
        let y = bn_apply(x, (c, h * w), gamma, beta, self.norm());
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
        let gam = gamma.to_vec1::<f32>()?;
        let (dx, dgamma, dbeta) = with_f32(x, |x| {
            with_f32(y, |y| {
                with_f32(g, |g| {
                    Ok(bn_backward(x, y, g, (b, c, h * w), &gam, self.norm()))
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
    let inv_std = inv_std(&var, eps);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_new_writes_every_chunk_in_order() {
        let v = par_new(12, 4, |i| (0..4).map(move |j| (10 * i + j) as f32));
        let want: Vec<f32> = (0..3)
            .flat_map(|i| (0..4).map(move |j| (10 * i + j) as f32))
            .collect();
        assert_eq!(v, want);
        assert!(par_new(0, 4, |_| std::iter::empty()).is_empty());
    }

    #[test]
    fn par_new_refuses_an_iterator_of_another_length() {
        for len in [3, 5] {
            let r = std::panic::catch_unwind(|| par_new(8, 4, |_| (0..len).map(|j| j as f32)));
            let msg = r.expect_err("a wrong-length chunk must panic");
            let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("its iterator gave another count"), "{msg}");
        }
    }
}
