//! The convolution engine: every convolution the models run goes through here.
//!
//! The model code (`crate::model`) calls only these functions, so the kernels
//! behind them can be chosen per device without touching the networks.
//! Layout is NCHW throughout; weights follow PyTorch's conventions
//! (`[out, in, k, k]` for convolutions, `[in, out, k, k]` for transposed ones).
//!
//! On the CPU with `f32` tensors the engine's own kernels run (direct
//! convolution on a padded, phase-split input with register tiling; the
//! stride-2 transposed convolution by sub-pixel decomposition; see
//! [`conv`]), as candle custom ops with their backward passes. Other devices
//! and dtypes use candle's stock ops. [`set_stock_ops`] switches the CPU back to
//! candle's ops, for comparison benchmarks.

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

pub mod bn;
pub mod conv;
pub mod geom;
mod kernels;
mod layer;
pub(crate) mod ops;
pub mod reference;
pub mod simd;

pub use geom::{ConvGeom, LayerConv};
pub use layer::{train_chain, BatchStats, TrainLayer};
pub use ops::with_f32;
pub use simd::Isa;

thread_local! {
    static STOCK: Cell<bool> = const { Cell::new(false) };
}

/// candle's environment variable for how many rounds an idle worker of its
/// elementwise thread pool spins before it sleeps.
pub const CANDLE_SPIN_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
/// Our default for it. candle's own (25,000 rounds of `pause`) keeps its idle
/// workers spinning after every elementwise op on the cores that the
/// engine's threads (a second pool) need next; a shorter spin gives those
/// cores back sooner. Figures: BENCHMARKS.md, "Changes kept" (candle's
/// spinning pool).
pub const CANDLE_SPIN_LIMIT: &str = "2000";

/// The value to give [`CANDLE_SPIN_VAR`], given what the environment holds:
/// ours when it is unset, none (the operator's stands) when it is set.
pub fn candle_spin_default(current: Option<&std::ffi::OsStr>) -> Option<&'static str> {
    match current {
        None => Some(CANDLE_SPIN_LIMIT),
        Some(_) => None,
    }
}

/// Sets candle's pool spin limit to [`CANDLE_SPIN_LIMIT`] unless the
/// environment already sets it. Call at start-up, before any thread starts
/// and before candle's pool is built (its first elementwise op reads it).
pub fn tune_candle_pool() -> Option<&'static str> {
    let v = candle_spin_default(std::env::var_os(CANDLE_SPIN_VAR).as_deref())?;
    std::env::set_var(CANDLE_SPIN_VAR, v);
    Some(v)
}

/// Use candle's stock ops instead of the engine's kernels on the CPU, for
/// model code called from this thread (for measuring the difference and for
/// tests; the engine is the default).
pub fn set_stock_ops(stock: bool) {
    STOCK.with(|s| s.set(stock));
}

/// Whether the engine's own CPU kernels run for these tensors (on this thread).
pub fn uses_engine(x: &Tensor, w: &Tensor) -> bool {
    !STOCK.with(|s| s.get())
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
}

/// 2-D convolution with symmetric zero padding `pad` and the given stride.
/// `x`: `[B, I, H, W]`, `w`: `[O, I, K, K]` -> `[B, O, H', W']`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if uses_engine(x, w) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, ops::Conv(LayerConv::Conv { stride, pad }))
    } else {
        x.conv2d(w, pad, stride, 1, 1)
    }
}

/// Transposed 2-D convolution, PyTorch semantics:
/// `H' = (H - 1) * stride - 2 * pad + K + out_pad`.
/// `x`: `[B, I, H, W]`, `w`: `[I, O, K, K]` -> `[B, O, H', W']`.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    out_pad: usize,
) -> Result<Tensor> {
    if uses_engine(x, w) {
        let conv = LayerConv::Transpose {
            stride,
            pad,
            out_pad,
        };
        x.contiguous()?.apply_op2(&w.contiguous()?, ops::Conv(conv))
    } else {
        x.conv_transpose2d(w, pad, out_pad, stride, 1)
    }
}

/// `relu?(conv2d(x, w) + b)` with `b`: `[O]`. Inference only.
pub fn conv2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    pad: usize,
    relu: bool,
) -> Result<Tensor> {
    if uses_engine(x, w) && b.dtype() == DType::F32 {
        engine_bias_relu(x, w, b, LayerConv::Conv { stride, pad }, relu)
    } else {
        bias_relu(conv2d(x, w, stride, pad)?, b, relu)
    }
}

/// `relu?(conv_transpose2d(x, w) + b)` with `b`: `[O]`. Inference only.
pub fn conv_transpose2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    pad: usize,
    out_pad: usize,
    relu: bool,
) -> Result<Tensor> {
    if uses_engine(x, w) && b.dtype() == DType::F32 {
        let conv = LayerConv::Transpose {
            stride,
            pad,
            out_pad,
        };
        engine_bias_relu(x, w, b, conv, relu)
    } else {
        bias_relu(conv_transpose2d(x, w, stride, pad, out_pad)?, b, relu)
    }
}

/// The engine's fused `relu?(conv(x, w) + b)`.
fn engine_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    conv: LayerConv,
    relu: bool,
) -> Result<Tensor> {
    let op = ops::ConvBiasRelu {
        conv: ops::Conv(conv),
        relu,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &op)
}

fn bias_relu(y: Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    let y = y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_spin_default_leaves_the_operators_value() {
        assert_eq!(candle_spin_default(None), Some(CANDLE_SPIN_LIMIT));
        assert_eq!(candle_spin_default(Some("25000".as_ref())), None);
        assert_eq!(candle_spin_default(Some("".as_ref())), None);
        // A value candle parses, below its own default.
        let ours: u32 = CANDLE_SPIN_LIMIT.parse().unwrap();
        assert!(ours < 25_000);
    }
}
