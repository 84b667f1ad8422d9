//! The convolution engine: every convolution the models run goes through here.
//!
//! The model code (`crate::model`) calls only these functions, so the kernels
//! behind them can be chosen per device without touching the networks.
//! Layout is NCHW throughout; weights follow PyTorch's conventions
//! (`[out, in, k, k]` for convolutions, `[in, out, k, k]` for transposed ones).

use candle_core::{Result, Tensor};

/// 2-D convolution with symmetric zero padding `pad` and the given stride.
/// `x`: `[B, I, H, W]`, `w`: `[O, I, K, K]` -> `[B, O, H', W']`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    x.conv2d(w, pad, stride, 1, 1)
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
    x.conv_transpose2d(w, pad, out_pad, stride, 1)
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
    bias_relu(conv2d(x, w, stride, pad)?, b, relu)
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
    bias_relu(conv_transpose2d(x, w, stride, pad, out_pad)?, b, relu)
}

fn bias_relu(y: Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    let y = y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}
