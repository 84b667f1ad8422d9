//! The geometry of a convolution, in one value (as candle's `ParamsConv2D`):
//! what the plans, the gradients and the reference definitions take instead
//! of a row of sizes, strides and paddings.

/// The convolution of a layer: which kind, its stride and padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerConv {
    /// `conv2d` with this stride and padding.
    Conv { stride: usize, pad: usize },
    /// `conv_transpose2d` with this stride, padding and output padding.
    Transpose {
        stride: usize,
        pad: usize,
        out_pad: usize,
    },
}

impl LayerConv {
    pub fn stride(self) -> usize {
        match self {
            LayerConv::Conv { stride, .. } | LayerConv::Transpose { stride, .. } => stride,
        }
    }

    pub fn pad(self) -> usize {
        match self {
            LayerConv::Conv { pad, .. } | LayerConv::Transpose { pad, .. } => pad,
        }
    }

    /// `(cin, cout)` of a weight of dims `(a, b, _, _)`: PyTorch's layouts
    /// are `[cout, cin, k, k]` for a convolution and `[cin, cout, k, k]` for
    /// a transposed one.
    pub fn channels(self, (a, b): (usize, usize)) -> (usize, usize) {
        match self {
            LayerConv::Conv { .. } => (b, a),
            LayerConv::Transpose { .. } => (a, b),
        }
    }
}

/// One convolution over `[cin, h, w]` images to `cout` channels with a
/// square `k x k` kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub conv: LayerConv,
}

impl ConvGeom {
    /// `conv` from `[cin, h, w]` images to `cout` channels, kernel `k x k`.
    pub fn new((cin, h, w): (usize, usize, usize), cout: usize, k: usize, conv: LayerConv) -> Self {
        ConvGeom {
            cin,
            h,
            w,
            cout,
            k,
            conv,
        }
    }

    pub fn stride(&self) -> usize {
        self.conv.stride()
    }

    pub fn pad(&self) -> usize {
        self.conv.pad()
    }

    /// The weight's dims in PyTorch's layout for this kind.
    pub fn weight_dims(&self) -> (usize, usize, usize, usize) {
        let (cin, cout, k) = (self.cin, self.cout, self.k);
        match self.conv {
            LayerConv::Conv { .. } => (cout, cin, k, k),
            LayerConv::Transpose { .. } => (cin, cout, k, k),
        }
    }

    /// Output rows and columns: `(n + 2 pad - k) / stride + 1` for a
    /// convolution, `(n - 1) stride - 2 pad + k + out_pad` for a transposed
    /// one (`None` where that is not a positive size).
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let k = self.k as isize;
        let axis = |n: usize| -> Option<usize> {
            let n = n as isize;
            let size = match self.conv {
                LayerConv::Conv { stride, pad } => {
                    let span = n + 2 * pad as isize - k;
                    (span >= 0).then(|| span / stride as isize + 1)?
                }
                LayerConv::Transpose {
                    stride,
                    pad,
                    out_pad,
                } => (n - 1) * stride as isize + k + out_pad as isize - 2 * pad as isize,
            };
            (size > 0).then_some(size as usize)
        };
        Some((axis(self.h)?, axis(self.w)?))
    }

    /// Floats of one image's input.
    pub fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(conv: LayerConv, h: usize, k: usize) -> ConvGeom {
        ConvGeom {
            cin: 3,
            h,
            w: h + 1,
            cout: 5,
            k,
            conv,
        }
    }

    #[test]
    fn output_sizes_follow_pytorch() {
        let conv = |stride, pad| LayerConv::Conv { stride, pad };
        assert_eq!(geom(conv(1, 1), 8, 3).out_hw(), Some((8, 9)));
        assert_eq!(geom(conv(2, 1), 8, 3).out_hw(), Some((4, 5)));
        assert_eq!(geom(conv(1, 0), 2, 3).out_hw(), None);
        let t = LayerConv::Transpose {
            stride: 2,
            pad: 1,
            out_pad: 1,
        };
        assert_eq!(geom(t, 4, 3).out_hw(), Some((8, 10)));
        assert_eq!(geom(t, 4, 3).weight_dims(), (3, 5, 3, 3));
        assert_eq!(geom(conv(1, 1), 4, 3).weight_dims(), (5, 3, 3, 3));
        assert_eq!(t.channels((3, 5)), (3, 5));
        assert_eq!(conv(1, 1).channels((5, 3)), (3, 5));
    }
}
