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
use super::layer::LayerConv;
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

/// `conv2d(x, w)`; `w`: `[O, I, K, K]`.
pub(crate) struct Conv2d {
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    pub(crate) fn plan(
        &self,
        x: &Layout,
        w: &[f32],
        wl: &Layout,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<ConvPlan> {
        let (_, ci, h, wd) = dims4(x)?;
        let (co, ci2, k, k2) = dims4(wl)?;
        check_square(k, k2, "conv2d")?;
        if ci != ci2 {
            candle_core::bail!("conv2d: input has {ci} channels, weight expects {ci2}")
        }
        if h + 2 * self.pad < k || wd + 2 * self.pad < k {
            candle_core::bail!("conv2d: input {h}x{wd} smaller than the {k}x{k} kernel")
        }
        Ok(ConvPlan::conv(
            Isa::detect(),
            (ci, h, wd),
            w,
            (co, k),
            self.stride,
            self.pad,
            bias,
            relu,
        ))
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "engine-conv2d"
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
        let conv = LayerConv::Conv {
            stride: self.stride,
            pad: self.pad,
        };
        op_grads(conv, x, w, g)
    }
}

/// Input gradient of `conv2d` for an input of `h x w`: `(g, w) -> dx`.
struct Conv2dInputGrad {
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
}

impl Conv2dInputGrad {
    /// `dx` (`[b, ci, h, w]`) for the output gradient `g` (`[b, co, oh, ow]`)
    /// and the weight `w` (`[co, ci, k, k]`).
    fn run(
        &self,
        g: &[f32],
        (b, co, oh, ow): (usize, usize, usize, usize),
        w: &[f32],
        (ci, k): (usize, usize),
    ) -> Result<Vec<f32>> {
        let (s, p) = (self.stride, self.pad);
        let plan = if s == 1 {
            // Flipped kernel, input and output channels swapped, pad k-1-p.
            let mut wf = vec![0f32; w.len()];
            for o in 0..co {
                for i in 0..ci {
                    for t in 0..k * k {
                        wf[(i * co + o) * k * k + (k * k - 1 - t)] = w[(o * ci + i) * k * k + t];
                    }
                }
            }
            if k < p + 1 {
                candle_core::bail!("engine-conv2d-input-grad: padding {p} >= kernel {k}")
            }
            ConvPlan::conv(
                Isa::detect(),
                (co, oh, ow),
                &wf,
                (ci, k),
                1,
                k - 1 - p,
                None,
                false,
            )
        } else {
            // The adjoint of a strided convolution: a transposed convolution
            // whose output padding restores the input size.
            let oph = (self.h + 2 * p - k) - (oh - 1) * s;
            let opw = (self.w + 2 * p - k) - (ow - 1) * s;
            ConvPlan::conv_transpose(
                Isa::detect(),
                (co, oh, ow),
                w,
                (ci, k),
                s,
                p,
                (oph, opw),
                None,
                false,
            )
        };
        debug_assert_eq!((plan.oh, plan.ow), (self.h, self.w));
        Ok(plan.run_new(g, b))
    }
}

/// The gradients of a convolution (`conv` of `x`, `[b, cin, h, w]`, with
/// the weight `w`, to `[b, cout, oh, ow]`) for the output gradient `g`:
/// the weight's, and the input's when `input_grad`. The one place the
/// backward rules of both convolutions are written: the separate ops and
/// the training chain ([`super::layer`]) call it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_grads(
    conv: LayerConv,
    x: &[f32],
    (b, cin, h, w): (usize, usize, usize, usize),
    wt: &[f32],
    g: &[f32],
    (cout, oh, ow): (usize, usize, usize),
    k: usize,
    input_grad: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
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
    match conv {
        LayerConv::Conv { stride, pad } => {
            let dw = conv2d_weight_grad(isa, g, x, (b, cin, h, w), (cout, oh, ow), k, stride, pad);
            let dx = match input_grad {
                true => Some(Conv2dInputGrad { stride, pad, h, w }.run(
                    g,
                    (b, cout, oh, ow),
                    wt,
                    (cin, k),
                )?),
                false => None,
            };
            Ok((dw, dx))
        }
        LayerConv::Transpose { stride, pad, .. } => {
            // dw[i, o] = sum x[i] * g[o] shifted: the convolution weight
            // gradient with x in the role of the output gradient.
            let dw = conv2d_weight_grad(isa, x, g, (b, cout, oh, ow), (cin, h, w), k, stride, pad);
            // dx = conv2d(g, w viewed as [I, O, K, K] = [out, in, k, k]).
            let dx = match input_grad {
                true => {
                    let gl = Layout::contiguous((b, cout, oh, ow));
                    let wl = Layout::contiguous((cin, cout, k, k));
                    let plan = Conv2d { stride, pad }.plan(&gl, wt, &wl, None, false)?;
                    Some(plan.run_new(g, b))
                }
                false => None,
            };
            Ok((dw, dx))
        }
    }
}

/// [`conv_grads`] for a separate convolution op's backward (`x`, `w`, `g`
/// as candle gives them).
fn op_grads(
    conv: LayerConv,
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (b, cin, h, wd) = x.dims4()?;
    let (_, cout, oh, ow) = g.dims4()?;
    let k = w.dim(2)?;
    let (dw, dx) = with_f32(x, |xs| {
        with_f32(w, |ws| {
            with_f32(g, |gs| {
                conv_grads(conv, xs, (b, cin, h, wd), ws, gs, (cout, oh, ow), k, true)
            })
        })
    })?;
    let dev = x.device();
    let dx = dx.map(|v| Tensor::from_vec(v, x.dims(), dev)).transpose()?;
    Ok((dx, Some(Tensor::from_vec(dw, w.dims(), dev)?)))
}

/// `conv_transpose2d(x, w)`; `w`: `[I, O, K, K]`.
pub(crate) struct ConvTranspose2d {
    pub stride: usize,
    pub pad: usize,
    pub out_pad: usize,
}

impl ConvTranspose2d {
    pub(crate) fn plan(
        &self,
        x: &Layout,
        w: &[f32],
        wl: &Layout,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<ConvPlan> {
        let (_, ci, h, wd) = dims4(x)?;
        let (ci2, co, k, k2) = dims4(wl)?;
        check_square(k, k2, "conv_transpose2d")?;
        if ci != ci2 {
            candle_core::bail!("conv_transpose2d: input has {ci} channels, weight expects {ci2}")
        }
        if self.out_pad >= self.stride {
            candle_core::bail!("conv_transpose2d: output padding must be below the stride")
        }
        let full = |n: usize| (n - 1) * self.stride + k + self.out_pad;
        if full(h) <= 2 * self.pad || full(wd) <= 2 * self.pad {
            candle_core::bail!("conv_transpose2d: empty output")
        }
        Ok(ConvPlan::conv_transpose(
            Isa::detect(),
            (ci, h, wd),
            w,
            (co, k),
            self.stride,
            self.pad,
            (self.out_pad, self.out_pad),
            bias,
            relu,
        ))
    }
}

impl CustomOp2 for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "engine-conv-transpose2d"
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
        let conv = LayerConv::Transpose {
            stride: self.stride,
            pad: self.pad,
            out_pad: self.out_pad,
        };
        op_grads(conv, x, w, g)
    }
}

/// Inference only: `relu?(conv2d(x, w) + b)`.
pub(crate) struct Conv2dBiasRelu {
    pub conv: Conv2d,
    pub relu: bool,
}

/// Inference only: `relu?(conv_transpose2d(x, w) + b)`.
pub(crate) struct ConvTranspose2dBiasRelu {
    pub conv: ConvTranspose2d,
    pub relu: bool,
}

impl CustomOp3 for Conv2dBiasRelu {
    fn name(&self) -> &'static str {
        "engine-conv2d-bias-relu"
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
        if b.len() != l2.shape().dims()[0] {
            candle_core::bail!("{}: bias has {} values", self.name(), b.len())
        }
        let plan = self.conv.plan(l1, w, l2, Some(b), self.relu)?;
        Ok(run_plan(&plan, x, l1.shape().dims()[0]))
    }
}

impl CustomOp3 for ConvTranspose2dBiasRelu {
    fn name(&self) -> &'static str {
        "engine-conv-transpose2d-bias-relu"
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
        if b.len() != l2.shape().dims()[1] {
            candle_core::bail!("{}: bias has {} values", self.name(), b.len())
        }
        let plan = self.conv.plan(l1, w, l2, Some(b), self.relu)?;
        Ok(run_plan(&plan, x, l1.shape().dims()[0]))
    }
}
