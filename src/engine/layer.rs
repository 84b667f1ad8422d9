//! Training layers (convolution or transposed convolution, BatchNorm with
//! batch statistics, ReLU), a chain of them as one op with its own backward.
//!
//! As separate ops (each layer's convolution, then [`super::bn`]'s
//! BatchNorm), every feature map's gradient passes from one op to the next
//! through candle's gradient store, which starts every gradient as a tensor
//! of zeros and adds the op's gradient into it: a zero fill and an add over
//! the feature map, twice per layer per step (BENCHMARKS.md). Here the chain's
//! feature maps stay inside the op (kept for the backward pass, as the graph
//! of separate ops keeps them), so only the chain's input and output
//! gradients and its parameters' enter the store. The arithmetic is the
//! separate ops': the same convolution, statistics, normalisation and
//! backward functions, in the same order, so the gradients have the same
//! bits.
//!
//! The parameters travel as one flat tensor (each layer's weight, gamma,
//! beta, in order), so that one op has them all; candle's backward of that
//! concatenation hands each parameter its part of the gradient.
//!
//! The network's input takes part in no gradient: for it (`!x.track_op()`)
//! the first layer skips the input gradient (a whole convolution).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::bn::{bn_apply, bn_backward, channel_stats, inv_std, BnNorm};
use super::conv::ConvPlan;
use super::geom::{ConvGeom, LayerConv};
use super::ops::{conv_grads, f32_slice, with_f32, Conv};

/// One layer of a chain, as the op sees it.
#[derive(Clone, Copy, Debug)]
struct LayerDesc {
    conv: LayerConv,
    cin: usize,
    cout: usize,
    k: usize,
    eps: f64,
}

impl LayerDesc {
    /// The weight's shape: `[cout, cin, k, k]`, or `[cin, cout, k, k]` for
    /// a transposed convolution.
    fn weight_shape(&self) -> (usize, usize, usize, usize) {
        self.geom((1, 1)).weight_dims()
    }

    /// Floats of this layer in the flat parameters: weight, gamma, beta.
    fn params(&self) -> usize {
        self.cin * self.cout * self.k * self.k + 2 * self.cout
    }

    /// The convolution's plan for a `[_, cin, h, w]` input.
    fn plan(&self, (h, w): (usize, usize), weight: &[f32]) -> Result<ConvPlan> {
        let xl = Layout::contiguous((1, self.cin, h, w));
        let wl = Layout::contiguous(self.weight_shape());
        Conv(self.conv).plan(&xl, weight, &wl, None, false)
    }

    /// The convolution's geometry on `[cin, h, w]` inputs.
    fn geom(&self, (h, w): (usize, usize)) -> ConvGeom {
        ConvGeom {
            cin: self.cin,
            h,
            w,
            cout: self.cout,
            k: self.k,
            conv: self.conv,
        }
    }
}

/// A layer's weight, gamma and beta in the flat parameters.
fn split_params<'a>(d: &LayerDesc, p: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32]) {
    let (w, gb) = p.split_at(p.len() - 2 * d.cout);
    let (g, b) = gb.split_at(d.cout);
    (w, g, b)
}

/// What the forward pass keeps for the backward one, per layer.
struct Saved {
    /// The convolution's output (the BatchNorm's input), `[b, cout, oh, ow]`.
    z: Vec<f32>,
    dims: (usize, usize, usize, usize),
    mean: Vec<f32>,
    /// Biased batch variance (for the running statistics).
    var: Vec<f32>,
    inv_std: Vec<f32>,
    /// The layer's output when another layer follows (the last one's is
    /// the op's result).
    y: Option<Vec<f32>>,
}

type Shared = Arc<Mutex<Vec<Saved>>>;

/// `relu(bn(conv(x)))` through every layer of `layers`, with batch
/// statistics; the second input holds the flat parameters.
struct ChainTrain {
    layers: Vec<LayerDesc>,
    saved: Shared,
}

// The method signatures are candle's `CustomOp2`, the same for every op.
impl CustomOp2 for ChainTrain {
    fn name(&self) -> &'static str {
        "engine-train-chain"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let p = f32_slice(s2, l2, self.name())?;
        let (b, c0, mut h, mut w) = l1.shape().dims4()?;
        if self.layers.first().map(|d| d.cin) != Some(c0) {
            candle_core::bail!("{}: input has {c0} channels", self.name())
        }
        let total: usize = self.layers.iter().map(LayerDesc::params).sum();
        if p.len() != total {
            candle_core::bail!(
                "{}: {} parameters given, the layers hold {total}",
                self.name(),
                p.len()
            )
        }
        let mut saved: Vec<Saved> = Vec::with_capacity(self.layers.len());
        let mut out = None;
        let mut off = 0;
        for (l, d) in self.layers.iter().enumerate() {
            let (wt, gamma, beta) = split_params(d, &p[off..off + d.params()]);
            off += d.params();
            let input: &[f32] = match l {
                0 => x,
                _ => saved[l - 1].y.as_deref().expect("a layer's output is kept"),
            };
            let plan = d.plan((h, w), wt)?;
            let z = plan.run_new(input, b);
            let hw = plan.oh * plan.ow;
            let (mean, var) = channel_stats(&z, (b, d.cout, hw));
            let inv = inv_std(&var, d.eps);
            let norm = BnNorm {
                mean: &mean,
                inv_std: &inv,
                relu: true,
            };
            let y = bn_apply(&z, (d.cout, hw), gamma, beta, norm);
            (h, w) = (plan.oh, plan.ow);
            let y = if l + 1 == self.layers.len() {
                out = Some(y);
                None
            } else {
                Some(y)
            };
            saved.push(Saved {
                z,
                dims: (b, d.cout, h, w),
                mean,
                var,
                inv_std: inv,
                y,
            });
        }
        let c = self.layers.last().map_or(c0, |d| d.cout);
        let out = out.ok_or_else(|| candle_core::Error::Msg("a chain without layers".into()))?;
        *self.saved.lock().expect("chain state lock") = saved;
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let pv = p.flatten_all()?.to_vec1::<f32>()?;
        let saved = self.saved.lock().expect("chain state lock");
        if saved.len() != self.layers.len() {
            candle_core::bail!("{}: backward before forward", self.name())
        }
        let (_, _, h0, w0) = x.dims4()?;
        let input_grad = x.track_op();
        let mut dp = vec![0f32; pv.len()];
        let dx = with_f32(x, |xs| {
            with_f32(res, |ys| {
                with_f32(g, |gs| {
                    // The gradient of the current layer's output: the
                    // op's for the last layer, then each input gradient.
                    let mut carried: Option<Vec<f32>> = None;
                    let mut end = pv.len();
                    for (l, d) in self.layers.iter().enumerate().rev() {
                        let s = &saved[l];
                        let start = end - d.params();
                        let (wt, gamma, _) = split_params(d, &pv[start..end]);
                        let y: &[f32] = s.y.as_deref().unwrap_or(ys);
                        let (input, (h, w)) = match l {
                            0 => (xs, (h0, w0)),
                            _ => {
                                let (_, _, h, w) = saved[l - 1].dims;
                                (saved[l - 1].y.as_deref().expect("kept"), (h, w))
                            }
                        };
                        let (b, co, oh, ow) = s.dims;
                        let norm = BnNorm {
                            mean: &s.mean,
                            inv_std: &s.inv_std,
                            relu: true,
                        };
                        let g = carried.as_deref().unwrap_or(gs);
                        let (dz, dgamma, dbeta) =
                            bn_backward(&s.z, y, g, (b, co, oh * ow), gamma, norm);
                        let dx_needed = l > 0 || input_grad;
                        let geom = d.geom((h, w));
                        let (dw, dx) = conv_grads(&geom, b, input, wt, &dz, dx_needed)?;
                        let dst = &mut dp[start..end];
                        let (dws, dgb) = dst.split_at_mut(dw.len());
                        dws.copy_from_slice(&dw);
                        dgb[..co].copy_from_slice(&dgamma);
                        dgb[co..].copy_from_slice(&dbeta);
                        end = start;
                        carried = dx;
                    }
                    Ok(carried)
                })
            })
        })?;
        let dev = x.device();
        let dx = match dx {
            Some(v) => Some(Tensor::from_vec(v, x.dims(), dev)?),
            None => None,
        };
        Ok((dx, Some(Tensor::from_vec(dp, p.dims(), dev)?)))
    }
}

/// A layer's batch statistics, per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    /// Values per channel (batch x height x width).
    pub count: usize,
}

/// One training layer of [`train_chain`]: `relu(batch_norm(conv(x, weight)))`
/// with the batch's statistics.
pub struct TrainLayer<'a> {
    pub conv: LayerConv,
    /// Kernel size (square).
    pub k: usize,
    pub weight: &'a Tensor,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    /// BatchNorm's epsilon.
    pub eps: f64,
}

/// Training layers applied in turn to CPU `f32` `x`, as one op
/// (differentiable in `x` and every parameter). Returns the last layer's
/// output and each layer's batch statistics, for the running statistics.
/// The engine's path only: callers check [`super::uses_engine`] (and `f32`
/// BatchNorm parameters) first, and otherwise run each layer's convolution
/// and BatchNorm as separate ops.
pub fn train_chain(layers: &[TrainLayer], x: &Tensor) -> Result<(Tensor, Vec<BatchStats>)> {
    let mut descs = Vec::with_capacity(layers.len());
    let mut parts = Vec::with_capacity(3 * layers.len());
    for l in layers {
        if !super::uses_engine(x, l.weight)
            || l.gamma.dtype() != DType::F32
            || l.beta.dtype() != DType::F32
        {
            candle_core::bail!("train_chain: the engine runs CPU f32 tensors only")
        }
        let (a, b, k, k2) = l.weight.dims4()?;
        let (cin, cout) = l.conv.channels((a, b));
        if (k, k2) != (l.k, l.k) {
            candle_core::bail!(
                "train_chain: weight {:?} for a {}x{} kernel",
                l.weight.dims(),
                l.k,
                l.k
            )
        }
        descs.push(LayerDesc {
            conv: l.conv,
            cin,
            cout,
            k: l.k,
            eps: l.eps,
        });
        parts.push(l.weight.flatten_all()?);
        parts.push(l.gamma.clone());
        parts.push(l.beta.clone());
    }
    let p = Tensor::cat(&parts, 0)?;
    let saved: Shared = Arc::new(Mutex::new(Vec::new()));
    let op = ChainTrain {
        layers: descs,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2_arc(&p, Arc::new(Box::new(op)))?;
    let stats = saved
        .lock()
        .expect("chain state lock")
        .iter()
        .map(|s| BatchStats {
            mean: s.mean.clone(),
            var: s.var.clone(),
            count: s.dims.0 * s.dims.2 * s.dims.3,
        })
        .collect();
    Ok((y, stats))
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

    /// A layer's parameters as variables.
    struct Params {
        desc: LayerDesc,
        w: Var,
        gamma: Var,
        beta: Var,
    }

    fn layer(rng: &mut Rng, conv: LayerConv, cin: usize, cout: usize, k: usize) -> Params {
        let desc = LayerDesc {
            conv,
            cin,
            cout,
            k,
            eps: 1e-5,
        };
        let (a, b, c, d) = desc.weight_shape();
        Params {
            desc,
            w: Var::from_tensor(&rand(rng, &[a, b, c, d], -0.5, 0.5)).unwrap(),
            gamma: Var::from_tensor(&rand(rng, &[cout], 0.5, 1.5)).unwrap(),
            // Offsets around zero, so that the ReLU cuts some of each map.
            beta: Var::from_tensor(&rand(rng, &[cout], -0.3, 0.3)).unwrap(),
        }
    }

    fn conv(stride: usize, pad: usize) -> LayerConv {
        LayerConv::Conv { stride, pad }
    }

    fn deconv() -> LayerConv {
        LayerConv::Transpose {
            stride: 2,
            pad: 1,
            out_pad: 1,
        }
    }

    /// The chain's output and batch statistics, as one op or as separate
    /// ops (each layer's convolution, then its BatchNorm + ReLU).
    fn forward(one_op: bool, layers: &[Params], x: &Tensor) -> (Tensor, Vec<BatchStats>) {
        if one_op {
            let lp: Vec<TrainLayer> = layers
                .iter()
                .map(|l| TrainLayer {
                    conv: l.desc.conv,
                    k: l.desc.k,
                    weight: l.w.as_tensor(),
                    gamma: l.gamma.as_tensor(),
                    beta: l.beta.as_tensor(),
                    eps: l.desc.eps,
                })
                .collect();
            return train_chain(&lp, x).unwrap();
        }
        let mut h = x.clone();
        let mut stats = Vec::new();
        for l in layers {
            let w = l.w.as_tensor();
            let z = match l.desc.conv {
                LayerConv::Conv { stride, pad } => conv2d(&h, w, stride, pad),
                LayerConv::Transpose {
                    stride,
                    pad,
                    out_pad,
                } => conv_transpose2d(&h, w, stride, pad, out_pad),
            }
            .unwrap();
            let (b, _, oh, ow) = z.dims4().unwrap();
            let (y, mean, var) = bn::batch_norm_train(
                &z,
                l.gamma.as_tensor(),
                l.beta.as_tensor(),
                l.desc.eps,
                true,
            )
            .unwrap();
            stats.push(BatchStats {
                mean,
                var,
                count: b * oh * ow,
            });
            h = y;
        }
        (h, stats)
    }

    /// The gradients of `sum(y * r)`: of `x` (as the gradient store holds
    /// it), then each layer's w, gamma, beta.
    fn grads(y: &Tensor, r: &Tensor, x: &Tensor, layers: &[Params]) -> Vec<Option<Tensor>> {
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![g.get(x).cloned()];
        for l in layers {
            for v in [&l.w, &l.gamma, &l.beta] {
                out.push(g.get(v.as_tensor()).cloned());
            }
        }
        out
    }

    #[test]
    fn chain_has_the_bits_of_the_separate_ops_forward_and_backward() {
        let mut rng = Rng::new(7);
        // Encoder-decoder shaped: stride 1 and 2, a 5x5 kernel, transposed.
        let chains = [
            (vec![layer(&mut rng, conv(1, 1), 3, 5, 3)], [2, 3, 9, 7]),
            (vec![layer(&mut rng, conv(2, 1), 4, 6, 3)], [3, 4, 10, 11]),
            (vec![layer(&mut rng, deconv(), 6, 4, 3)], [2, 6, 5, 6]),
            (
                vec![
                    layer(&mut rng, conv(1, 1), 2, 4, 3),
                    layer(&mut rng, conv(2, 1), 4, 6, 3),
                    layer(&mut rng, conv(1, 2), 6, 5, 5),
                    layer(&mut rng, deconv(), 5, 3, 3),
                    layer(&mut rng, conv(1, 1), 3, 4, 3),
                ],
                [2, 2, 12, 10],
            ),
        ];
        for (case, (layers, xs)) in chains.iter().enumerate() {
            let xv = Var::from_tensor(&rand(&mut rng, xs, -1.0, 1.0)).unwrap();
            let x = xv.as_tensor();
            let (y2, s2) = forward(false, layers, x);
            let (y1, s1) = forward(true, layers, x);
            assert_eq!(y1.dims(), y2.dims(), "case {case}");
            assert_eq!(bits(&y1), bits(&y2), "case {case}: output");
            let v = y2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let cut = v.iter().filter(|&&a| a == 0.0).count();
            assert!(cut > 0 && cut < v.len(), "case {case}: ReLU cut {cut}");
            assert_eq!(s1, s2, "case {case}: batch statistics");
            let r = rand(&mut rng, y2.dims(), -1.0, 1.0);
            let (g1, g2) = (grads(&y1, &r, x, layers), grads(&y2, &r, x, layers));
            assert_eq!(g1.len(), 1 + 3 * layers.len());
            for (i, (a, e)) in g1.iter().zip(&g2).enumerate() {
                let what = match i {
                    0 => "x".to_string(),
                    _ => format!(
                        "layer {} {}",
                        (i - 1) / 3,
                        ["w", "gamma", "beta"][(i - 1) % 3]
                    ),
                };
                let a = a
                    .as_ref()
                    .unwrap_or_else(|| panic!("case {case}: no {what} gradient"));
                let e = e.as_ref().unwrap();
                assert_eq!(a.dims(), e.dims(), "case {case}: {what} gradient shape");
                assert_eq!(bits(a), bits(e), "case {case}: {what} gradient");
            }
        }
    }

    #[test]
    fn chain_skips_the_gradient_of_an_input_that_takes_none() {
        let mut rng = Rng::new(8);
        let layers = vec![
            layer(&mut rng, conv(1, 1), 1, 4, 3),
            layer(&mut rng, conv(2, 1), 4, 4, 3),
        ];
        let plain = rand(&mut rng, &[2, 1, 8, 8], 0.0, 1.0);
        let xv = Var::from_tensor(&plain).unwrap();
        let r = rand(&mut rng, &[2, 4, 4, 4], -1.0, 1.0);
        let run = |one_op: bool, x: &Tensor| {
            let (y, _) = forward(one_op, &layers, x);
            grads(&y, &r, x, &layers)
        };
        let (skip, var, sep) = (
            run(true, &plain),
            run(true, xv.as_tensor()),
            run(false, &plain),
        );
        assert!(skip[0].is_none(), "no input gradient for a plain input");
        assert!(var[0].is_some(), "a variable input gets its gradient");
        // The separate ops compute (and store) it for a plain input too.
        assert!(sep[0].is_some());
        for i in 1..skip.len() {
            let (a, e) = (skip[i].as_ref().unwrap(), var[i].as_ref().unwrap());
            assert_eq!(bits(a), bits(e), "parameter {i}");
        }
    }
}
