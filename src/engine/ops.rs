//! The engine's kernels as candle custom ops, with their backward passes.
//!
//! Backward of a convolution needs two more convolutions, which are
//! themselves engine kernels:
//! * input gradient: for stride 1 a convolution of the output gradient with the
//!   flipped, transposed kernel; for stride `s > 1` a stride-`s` transposed
//!   convolution (run as `s * s` sub-pixel phases);
//! * weight gradient: [`conv2d_weight_grad`].
//!
//! A transposed convolution is the adjoint of a strided convolution, so its
//! input gradient is a strided convolution with the same weights and its weight
//! gradient is the convolution weight gradient with the roles of input and
//! output swapped.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage,
    Tensor,
};

use super::conv::{conv2d_weight_grad, ConvPlan};
use super::geom::{ConvGeom, LayerConv};
use super::simd::Isa;

/// The contiguous `f32` data of a CPU storage.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: input is not contiguous"),
        _ => candle_core::bail!("{op}: the CPU engine runs f32, got {:?}", s.dtype()),
    }
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(cs) => f(f32_slice(cs, l, "engine")?),
        _ => candle_core::bail!("engine: expected a CPU tensor"),
    }
}

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

fn run_plan(plan: &ConvPlan, x: &[f32], batch: usize) -> (CpuStorage, Shape) {
    let out = plan.run_new(x, batch);
    (
        CpuStorage::F32(out),
        Shape::from((batch, plan.cout, plan.oh, plan.ow)),
    )
}

fn check_square(k1: usize, k2: usize, op: &str) -> Result<()> {
    if k1 != k2 {
        candle_core::bail!("{op}: only square kernels are supported, got {k1}x{k2}")
    }
    Ok(())
}

/// A convolution of either kind as the engine's op: `conv2d(x, w)` with
/// `w` `[O, I, K, K]`, or `conv_transpose2d(x, w)` with `w` `[I, O, K, K]`.
pub(crate) struct Conv(pub LayerConv);

impl Conv {
    /// The operation's name in errors, as PyTorch calls it.
    fn op(&self) -> &'static str {
        match self.0 {
            LayerConv::Conv { .. } => "conv2d",
            LayerConv::Transpose { .. } => "conv_transpose2d",
        }
    }

    /// The geometry of this convolution of an input laid out as `x` with a
    /// weight laid out as `wl`, or why they do not fit.
    pub(crate) fn geom(&self, x: &Layout, wl: &Layout) -> Result<ConvGeom> {
        let op = self.op();
        let (_, cin, h, w) = dims4(x)?;
        let (a, b, k, k2) = dims4(wl)?;
        check_square(k, k2, op)?;
        let (wcin, cout) = self.0.channels((a, b));
        if cin != wcin {
            candle_core::bail!("{op}: input has {cin} channels, weight expects {wcin}")
        }
        if let LayerConv::Transpose {
            stride, out_pad, ..
        } = self.0
        {
            if out_pad >= stride {
                candle_core::bail!("{op}: output padding must be below the stride")
            }
        }
        let g = ConvGeom {
            cin,
            h,
            w,
            cout,
            k,
            conv: self.0,
        };
        match (g.out_hw(), self.0) {
            (Some(_), _) => Ok(g),
            (None, LayerConv::Conv { .. }) => {
                candle_core::bail!("{op}: input {h}x{w} smaller than the {k}x{k} kernel")
            }
            (None, LayerConv::Transpose { .. }) => candle_core::bail!("{op}: empty output"),
        }
    }

    /// The plan of this convolution, with `+ bias` (one value per output
    /// channel) and ReLU when asked.
    pub(crate) fn plan(
        &self,
        x: &Layout,
        w: &[f32],
        wl: &Layout,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<ConvPlan> {
        let g = self.geom(x, wl)?;
        if let Some(b) = bias.filter(|b| b.len() != g.cout) {
            candle_core::bail!("{}: bias has {} values", self.op(), b.len())
        }
        Ok(ConvPlan::new(Isa::detect(), &g, w, bias, relu))
    }
}

// The method signatures are candle's `CustomOp2`, the same for every op.
impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        match self.0 {
            LayerConv::Conv { .. } => "engine-conv2d",
            LayerConv::Transpose { .. } => "engine-conv-transpose2d",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let plan = self.plan(l1, w, l2, None, false)?;
        Ok(run_plan(&plan, x, l1.shape().dims()[0]))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let geom = self.geom(x.layout(), w.layout())?;
        let b = x.dim(0)?;
        let (dw, dx) = with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_f32(g, |gs| conv_grads(&geom, b, xs, ws, gs, true))
            })
        })?;
        let dev = x.device();
        let dx = dx.map(|v| Tensor::from_vec(v, x.dims(), dev)).transpose()?;
        Ok((dx, Some(Tensor::from_vec(dw, w.dims(), dev)?)))
    }
}

/// Input gradient of the convolution `geom` (of kind [`LayerConv::Conv`]):
/// `dx` (`[b, cin, h, w]`) for the output gradient `g` (`[b, cout, oh,
/// ow]`) and the weight `w` (`[cout, cin, k, k]`).
fn conv2d_input_grad(
    geom: &ConvGeom,
    b: usize,
    (oh, ow): (usize, usize),
    g: &[f32],
    w: &[f32],
) -> Result<Vec<f32>> {
    let (ci, co, k, s, p) = (geom.cin, geom.cout, geom.k, geom.stride(), geom.pad());
    let back = |conv| ConvGeom {
        cin: co,
        h: oh,
        w: ow,
        cout: ci,
        k,
        conv,
    };
    let isa = Isa::detect();
    let plan = if s == 1 {
        // Flipped kernel, input and output channels swapped, pad k-1-p.
        if k < p + 1 {
            candle_core::bail!("engine-conv2d-input-grad: padding {p} >= kernel {k}")
        }
        let mut wf = vec![0f32; w.len()];
        for o in 0..co {
            for i in 0..ci {
                for t in 0..k * k {
                    wf[(i * co + o) * k * k + (k * k - 1 - t)] = w[(o * ci + i) * k * k + t];
                }
            }
        }
        let pad = k - 1 - p;
        ConvPlan::new(
            isa,
            &back(LayerConv::Conv { stride: 1, pad }),
            &wf,
            None,
            false,
        )
    } else {
        // The adjoint of a strided convolution: a transposed convolution
        // whose output padding restores the input size.
        let oph = (geom.h + 2 * p - k) - (oh - 1) * s;
        let opw = (geom.w + 2 * p - k) - (ow - 1) * s;
        let conv = LayerConv::Transpose {
            stride: s,
            pad: p,
            out_pad: 0,
        };
        ConvPlan::with_out_pad(isa, &back(conv), (oph, opw), w, None, false)
    };
    debug_assert_eq!((plan.oh, plan.ow), (geom.h, geom.w));
    Ok(plan.run_new(g, b))
}

/// The gradients of the convolution `geom` of the `b` images `x` with the
/// weight `wt`, for the output gradient `g`: the weight's, and the input's
/// when `input_grad`. The one place the backward rules of both convolutions
/// are written: the separate ops and the training chain
/// ([`super::layer`]) call it.
pub(crate) fn conv_grads(
    geom: &ConvGeom,
    b: usize,
    x: &[f32],
    wt: &[f32],
    g: &[f32],
    input_grad: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let (cin, h, w, cout, k) = (geom.cin, geom.h, geom.w, geom.cout, geom.k);
    let (oh, ow) = geom.out_hw().unwrap_or((0, 0));
    if x.len() != b * cin * h * w || g.len() != b * cout * oh * ow || wt.len() != cin * cout * k * k
    {
        candle_core::bail!(
            "convolution backward: input {}, gradient {}, weight {} values for \
             [{b}, {cin}, {h}, {w}] -> [{b}, {cout}, {oh}, {ow}], {k}x{k}",
            x.len(),
            g.len(),
            wt.len()
        )
    }
    let isa = Isa::detect();
    match geom.conv {
        LayerConv::Conv { .. } => {
            let dw = conv2d_weight_grad(isa, g, x, b, geom, (oh, ow));
            let dx = match input_grad {
                true => Some(conv2d_input_grad(geom, b, (oh, ow), g, wt)?),
                false => None,
            };
            Ok((dw, dx))
        }
        LayerConv::Transpose { stride, pad, .. } => {
            // The convolution this transposed one is the adjoint of, from
            // the output `[cout, oh, ow]` to the input `[cin, h, w]`.
            let adjoint = ConvGeom {
                cin: cout,
                h: oh,
                w: ow,
                cout: cin,
                k,
                conv: LayerConv::Conv { stride, pad },
            };
            // dw[i, o] = sum x[i] * g[o] shifted: the convolution weight
            // gradient with x in the role of the output gradient.
            let dw = conv2d_weight_grad(isa, x, g, b, &adjoint, (h, w));
            // dx = conv2d(g, w viewed as [I, O, K, K] = [out, in, k, k]).
            let dx = match input_grad {
                true => Some(ConvPlan::new(isa, &adjoint, wt, None, false).run_new(g, b)),
                false => None,
            };
            Ok((dw, dx))
        }
    }
}

/// Inference only: `relu?(conv(x, w) + b)` for a convolution of either kind.
pub(crate) struct ConvBiasRelu {
    pub conv: Conv,
    pub relu: bool,
}

// The method signatures are candle's `CustomOp3`, the same for every op.
impl CustomOp3 for ConvBiasRelu {
    fn name(&self) -> &'static str {
        match self.conv.0 {
            LayerConv::Conv { .. } => "engine-conv2d-bias-relu",
            LayerConv::Transpose { .. } => "engine-conv-transpose2d-bias-relu",
        }
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
        let b = f32_slice(s3, l3, self.name())?;
        let plan = self.conv.plan(l1, w, l2, Some(b), self.relu)?;
        Ok(run_plan(&plan, x, l1.shape().dims()[0]))
    }
}
