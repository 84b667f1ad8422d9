//! Naive reference convolutions: the definitions, written as plain loops with
//! `f64` accumulation. The fast kernels are tested against these; nothing in
//! the product runs them.

use super::geom::{ConvGeom, LayerConv};

/// The convolution `g` of the `b` images `x` with the weight `wt` (PyTorch's
/// layouts). Returns the output and its `(oh, ow)`.
pub fn conv(x: &[f32], b: usize, g: &ConvGeom, wt: &[f32]) -> (Vec<f32>, usize, usize) {
    let dims = (b, g.cin, g.h, g.w);
    match g.conv {
        LayerConv::Conv { stride, pad } => conv2d(x, dims, wt, (g.cout, g.k), stride, pad),
        LayerConv::Transpose {
            stride,
            pad,
            out_pad,
        } => conv_transpose2d(x, dims, wt, (g.cout, g.k), (stride, pad, out_pad)),
    }
}

/// `conv2d`: `x` `[b, ci, h, w]`, `w` `[co, ci, k, k]`, symmetric `pad`.
fn conv2d(
    x: &[f32],
    (b, ci, h, w): (usize, usize, usize, usize),
    wt: &[f32],
    (co, k): (usize, usize),
    stride: usize,
    pad: usize,
) -> (Vec<f32>, usize, usize) {
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (w + 2 * pad - k) / stride + 1;
    let mut out = vec![0f32; b * co * oh * ow];
    for bi in 0..b {
        for o in 0..co {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut acc = 0f64;
                    for c in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (y * stride + ky) as isize - pad as isize;
                                let ix = (xx * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((bi * ci + c) * h + iy as usize) * w + ix as usize];
                                let wv = wt[((o * ci + c) * k + ky) * k + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((bi * co + o) * oh + y) * ow + xx] = acc as f32;
                }
            }
        }
    }
    (out, oh, ow)
}

/// `conv_transpose2d`: `x` `[b, ci, h, w]`, `w` `[ci, co, k, k]` (PyTorch
/// semantics), output `(h - 1) * stride - 2 * pad + k + out_pad`.
fn conv_transpose2d(
    x: &[f32],
    (b, ci, h, w): (usize, usize, usize, usize),
    wt: &[f32],
    (co, k): (usize, usize),
    (stride, pad, out_pad): (usize, usize, usize),
) -> (Vec<f32>, usize, usize) {
    let oh = (h - 1) * stride + k + out_pad - 2 * pad;
    let ow = (w - 1) * stride + k + out_pad - 2 * pad;
    let mut acc = vec![0f64; b * co * oh * ow];
    for bi in 0..b {
        for c in 0..ci {
            for iy in 0..h {
                for ix in 0..w {
                    let xv = x[((bi * ci + c) * h + iy) * w + ix] as f64;
                    for o in 0..co {
                        for ky in 0..k {
                            for kx in 0..k {
                                let y = (iy * stride + ky) as isize - pad as isize;
                                let xx = (ix * stride + kx) as isize - pad as isize;
                                if y < 0 || xx < 0 || y >= oh as isize || xx >= ow as isize {
                                    continue;
                                }
                                let wv = wt[((c * co + o) * k + ky) * k + kx] as f64;
                                acc[((bi * co + o) * oh + y as usize) * ow + xx as usize] +=
                                    xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    (acc.into_iter().map(|v| v as f32).collect(), oh, ow)
}
