//! A training layer (convolution or transposed convolution, BatchNorm with
//! batch statistics, ReLU) as one op with its own backward.
//!
//! As two ops, the convolution's and [`super::bn`]'s BatchNorm's, the
//! gradient of the convolution's output passes between them through candle's
//! gradient store, which starts every gradient as a tensor of zeros and adds
//! the op's gradient into it: a zero fill and an add over the whole feature
//! map, per layer, per step (BENCHMARKS.md). Here the convolution's output
//! stays inside the op (kept for the backward pass, as the two-op graph keeps
//! it), so that gradient never enters the store. The arithmetic is the two
//! ops': the same convolution, statistics, normalisation and backward
//! functions, in the same order.
//!
//! The network's input takes part in no gradient: for it (`!x.track_op()`)
//! the first layer skips the input gradient (a whole convolution).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::bn::{bn_apply, bn_backward, channel_stats, inv_std};
use super::ops::{f32_slice, with_f32, Conv2d, ConvTranspose2d};

/// The convolution of a training layer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ConvKind {
    Conv(Conv2d),
    Transpose(ConvTranspose2d),
}

/// What the forward pass keeps for the backward one.
struct Saved {
    /// The convolution's output (the BatchNorm's input).
    z: Vec<f32>,
    mean: Vec<f32>,
    /// Biased batch variance (for the running statistics).
    var: Vec<f32>,
    inv_std: Vec<f32>,
}

type Shared = Arc<Mutex<Option<Saved>>>;

/// `relu(bn(conv(x, w)))` with batch statistics; the third input is
/// `[gamma; beta]` as one `[2, C]` tensor.
struct ConvBnReluTrain {
    conv: ConvKind,
    eps: f64,
    saved: Shared,
}

impl CustomOp3 for ConvBnReluTrain {
    fn name(&self) -> &'static str {
        "engine-conv-bn-relu-train"
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
        let w = f32_slice(s2, l2, self.name())?;
        let gb = f32_slice(s3, l3, self.name())?;
        let batch = l1.shape().dims4()?.0;
        let plan = match &self.conv {
            ConvKind::Conv(c) => c.plan(l1, w, l2, None, false)?,
            ConvKind::Transpose(t) => t.plan(l1, w, l2, None, false)?,
        };
        let c = plan.cout;
        if gb.len() != 2 * c {
            candle_core::bail!(
                "{}: BatchNorm parameters hold {} values, {c} channels need {}",
                self.name(),
                gb.len(),
                2 * c
            )
        }
        let z = plan.run_new(x, batch);
        let hw = plan.oh * plan.ow;
        let (mean, var) = channel_stats(&z, (batch, c, hw));
        let inv = inv_std(&var, self.eps);
        let y = bn_apply(&z, (c, hw), &gb[..c], &gb[c..], &mean, &inv, true);
        *self.saved.lock().expect("layer state lock") = Some(Saved {
            z,
            mean,
            var,
            inv_std: inv,
        });
        Ok((
            CpuStorage::F32(y),
            Shape::from((batch, c, plan.oh, plan.ow)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, h, wd) = y.dims4()?;
        let gamma_beta = gb.flatten_all()?.to_vec1::<f32>()?;
        let (dz, dgamma, dbeta) = {
            let saved = self.saved.lock().expect("layer state lock");
            let Some(s) = saved.as_ref() else {
                candle_core::bail!("{}: backward before forward", self.name())
            };
            with_f32(y, |y| {
                with_f32(g, |g| {
                    Ok(bn_backward(
                        &s.z,
                        y,
                        g,
                        (b, c, h * wd),
                        &gamma_beta[..c],
                        &s.mean,
                        &s.inv_std,
                        true,
                    ))
                })
            })?
        };
        let dev = y.device();
        let dz = Tensor::from_vec(dz, (b, c, h, wd), dev)?;
        let input_grad = x.track_op();
        let (gx, gw) = match &self.conv {
            ConvKind::Conv(k) => k.grads(x, w, &dz, input_grad)?,
            ConvKind::Transpose(k) => k.grads(x, w, &dz, input_grad)?,
        };
        let mut dgb = dgamma;
        dgb.extend_from_slice(&dbeta);
        Ok((gx, Some(gw), Some(Tensor::from_vec(dgb, (2, c), dev)?)))
    }
}

/// A training layer on CPU `f32` tensors: `relu(batch_norm(conv(x, w)))`
/// with the batch's statistics, differentiable in `x`, `w`, `gamma` and
/// `beta`. Returns the output and the batch mean and biased variance (for
/// the running statistics).
pub(crate) fn conv_bn_relu_train(
    conv: ConvKind,
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let gb = Tensor::stack(&[gamma, beta], 0)?.contiguous()?;
    let saved: Shared = Arc::new(Mutex::new(None));
    let op = ConvBnReluTrain {
        conv,
        eps,
        saved: saved.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3_arc(&w.contiguous()?, &gb, Arc::new(Box::new(op)))?;
    let guard = saved.lock().expect("layer state lock");
    let s = guard
        .as_ref()
        .expect("the forward pass stores the batch statistics");
    Ok((y, s.mean.clone(), s.var.clone()))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::{bn, conv2d, conv_transpose2d};
    use super::*;
    use crate::rng::Rng;

    fn rand(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.range(lo, hi) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The output, batch statistics and gradients of one layer, fused or as
    /// two ops, for `L = sum(y * r)`; `x_var`: whether `x` is a variable
    /// (else a plain tensor, as the network's input).
    struct Run {
        y: Tensor,
        mean: Vec<f32>,
        var: Vec<f32>,
        /// Of x, w, gamma, beta, as the gradient store holds them.
        grads: Vec<Option<Tensor>>,
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        conv: ConvKind,
        fused: bool,
        x: &Tensor,
        x_var: bool,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        r: &Tensor,
    ) -> Run {
        let eps = 1e-5;
        let xv = Var::from_tensor(x).unwrap();
        let xt = if x_var {
            xv.as_tensor().clone()
        } else {
            x.clone()
        };
        let (wv, gv, bv) = (
            Var::from_tensor(w).unwrap(),
            Var::from_tensor(gamma).unwrap(),
            Var::from_tensor(beta).unwrap(),
        );
        let (y, mean, var) = if fused {
            conv_bn_relu_train(
                conv,
                &xt,
                wv.as_tensor(),
                gv.as_tensor(),
                bv.as_tensor(),
                eps,
            )
            .unwrap()
        } else {
            let z = match conv {
                ConvKind::Conv(c) => conv2d(&xt, wv.as_tensor(), c.stride, c.pad),
                ConvKind::Transpose(t) => {
                    conv_transpose2d(&xt, wv.as_tensor(), t.stride, t.pad, t.out_pad)
                }
            }
            .unwrap();
            bn::batch_norm_train(&z, gv.as_tensor(), bv.as_tensor(), eps, true).unwrap()
        };
        let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let grads = [&xt, wv.as_tensor(), gv.as_tensor(), bv.as_tensor()]
            .iter()
            .map(|t| g.get(t).cloned())
            .collect();
        Run {
            y,
            mean,
            var,
            grads,
        }
    }

    #[test]
    fn fused_layer_has_the_bits_of_the_two_ops_forward_and_backward() {
        let mut rng = Rng::new(7);
        let cases = [
            // (kind, batch, cin, cout, k, h, w)
            (
                ConvKind::Conv(Conv2d { stride: 1, pad: 1 }),
                2,
                3,
                5,
                3,
                9,
                7,
            ),
            (
                ConvKind::Conv(Conv2d { stride: 2, pad: 1 }),
                3,
                4,
                6,
                3,
                10,
                11,
            ),
            (
                ConvKind::Conv(Conv2d { stride: 1, pad: 2 }),
                2,
                2,
                3,
                5,
                8,
                8,
            ),
            (
                ConvKind::Transpose(ConvTranspose2d {
                    stride: 2,
                    pad: 1,
                    out_pad: 1,
                }),
                2,
                6,
                4,
                3,
                5,
                6,
            ),
        ];
        for (case, &(kind, b, ci, co, k, h, w)) in cases.iter().enumerate() {
            let x = rand(&mut rng, &[b, ci, h, w], -1.0, 1.0);
            let wshape = match kind {
                ConvKind::Conv(_) => [co, ci, k, k],
                ConvKind::Transpose(_) => [ci, co, k, k],
            };
            let wt = rand(&mut rng, &wshape, -0.5, 0.5);
            let gamma = rand(&mut rng, &[co], 0.5, 1.5);
            // Offsets around zero, so that the ReLU cuts some of each channel.
            let beta = rand(&mut rng, &[co], -0.3, 0.3);
            let out = match kind {
                ConvKind::Conv(c) => conv2d(&x, &wt, c.stride, c.pad),
                ConvKind::Transpose(t) => conv_transpose2d(&x, &wt, t.stride, t.pad, t.out_pad),
            }
            .unwrap();
            let r = rand(&mut rng, out.dims(), -1.0, 1.0);
            let two = run(kind, false, &x, true, &wt, &gamma, &beta, &r);
            let one = run(kind, true, &x, true, &wt, &gamma, &beta, &r);
            assert_eq!(one.y.dims(), two.y.dims(), "case {case}");
            assert_eq!(bits(&one.y), bits(&two.y), "case {case}: output");
            let zeros = two.y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let cut = zeros.iter().filter(|&&v| v == 0.0).count();
            assert!(cut > 0 && cut < zeros.len(), "case {case}: ReLU cut {cut}");
            assert_eq!(one.mean, two.mean, "case {case}: mean");
            assert_eq!(one.var, two.var, "case {case}: variance");
            for (i, name) in ["x", "w", "gamma", "beta"].iter().enumerate() {
                let (a, e) = (one.grads[i].as_ref(), two.grads[i].as_ref());
                let (a, e) = (
                    a.unwrap_or_else(|| panic!("case {case}: no fused {name} gradient")),
                    e.unwrap(),
                );
                assert_eq!(a.dims(), e.dims(), "case {case}: {name} gradient shape");
                assert_eq!(bits(a), bits(e), "case {case}: {name} gradient");
            }
        }
    }

    #[test]
    fn fused_layer_skips_the_gradient_of_an_input_that_takes_none() {
        let mut rng = Rng::new(8);
        let kind = ConvKind::Conv(Conv2d { stride: 1, pad: 1 });
        let x = rand(&mut rng, &[2, 1, 6, 6], 0.0, 1.0);
        let wt = rand(&mut rng, &[4, 1, 3, 3], -0.5, 0.5);
        let gamma = rand(&mut rng, &[4], 0.5, 1.5);
        let beta = rand(&mut rng, &[4], -0.3, 0.3);
        let r = rand(&mut rng, &[2, 4, 6, 6], -1.0, 1.0);
        let plain = run(kind, true, &x, false, &wt, &gamma, &beta, &r);
        let var = run(kind, true, &x, true, &wt, &gamma, &beta, &r);
        assert!(
            plain.grads[0].is_none(),
            "no input gradient for a plain input"
        );
        assert!(var.grads[0].is_some(), "a variable input gets its gradient");
        // The two ops compute (and store) it for a plain input as well.
        let two = run(kind, false, &x, false, &wt, &gamma, &beta, &r);
        assert!(two.grads[0].is_some());
        for i in 1..4 {
            let (a, e) = (plain.grads[i].as_ref(), var.grads[i].as_ref());
            assert_eq!(bits(a.unwrap()), bits(e.unwrap()), "parameter {i}");
        }
    }
}
