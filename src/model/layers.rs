//! The layers of the GCM and their parameter names.
//!
//! The layer plan ([`LayerSpec`]) is the single description of the network's
//! convolutions: the builder, the weight initialiser, the checkpoint validator
//! and the BatchNorm folding all derive from it, so the tensor names in
//! `model.safetensors` cannot drift from the code that reads them.

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::VarBuilder;

use crate::engine;

/// BatchNorm momentum for the running statistics (PyTorch's convention:
/// `running = (1 - m) * running + m * batch`).
pub const BN_MOMENTUM: f64 = 0.1;

/// What one convolution layer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// 3x3 (or `k`) convolution with "same" padding and the given stride.
    Conv { stride: usize },
    /// Stride-2 transposed convolution that exactly doubles the size
    /// (PyTorch `ConvTranspose2d(k, stride=2, padding=k/2, output_padding=1)`).
    Deconv,
}

/// One convolution + BatchNorm + ReLU layer of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// Name prefix in the checkpoint, e.g. `encoder.4`.
    pub prefix: String,
    pub op: Op,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
}

impl LayerSpec {
    /// Name of the weight tensor (`<prefix>.conv.weight` or `<prefix>.deconv.weight`).
    pub fn weight_name(&self) -> String {
        match self.op {
            Op::Conv { .. } => format!("{}.conv.weight", self.prefix),
            Op::Deconv => format!("{}.deconv.weight", self.prefix),
        }
    }

    /// Weight shape: `[cout, cin, k, k]` for a convolution, `[cin, cout, k, k]` for a
    /// transposed convolution (PyTorch's layouts).
    pub fn weight_shape(&self) -> [usize; 4] {
        match self.op {
            Op::Conv { .. } => [self.cout, self.cin, self.k, self.k],
            Op::Deconv => [self.cin, self.cout, self.k, self.k],
        }
    }

    /// Fan-in of one output value, for He initialisation.
    pub fn fan_in(&self) -> usize {
        match self.op {
            Op::Conv { .. } => self.cin * self.k * self.k,
            // A stride-2 transposed convolution sees about a quarter of its taps per output.
            Op::Deconv => (self.cin * self.k * self.k).div_ceil(4),
        }
    }

    pub fn bn_name(&self, field: &str) -> String {
        format!("{}.bn.{field}", self.prefix)
    }
}

/// BatchNorm over the channels of an NCHW tensor.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
}

impl BatchNorm {
    pub fn new(channels: usize, eps: f64, prefix: &str, vb: &VarBuilder) -> Result<Self> {
        let get = |f: &str| vb.get(channels, &format!("{prefix}.bn.{f}"));
        Ok(BatchNorm {
            gamma: get("weight")?,
            beta: get("bias")?,
            running_mean: Var::from_tensor(&get("running_mean")?)?,
            running_var: Var::from_tensor(&get("running_var")?)?,
            eps,
        })
    }

    /// Per-channel `(scale, shift)` with `y = x * scale + shift` in inference mode.
    pub fn folded(&self) -> Result<(Tensor, Tensor)> {
        let scale = self
            .gamma
            .broadcast_div(&(self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let shift = (&self.beta - self.running_mean.as_tensor().mul(&scale)?)?;
        Ok((scale, shift))
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false)
    }

    /// `relu(self.forward_t(x, train))`, fused into one op in training mode on the CPU.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true)
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        let bshape = (1, c, 1, 1);
        if !train {
            let (scale, shift) = self.folded()?;
            let y = x
                .broadcast_mul(&scale.reshape(bshape)?)?
                .broadcast_add(&shift.reshape(bshape)?)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let (b, _, h, w) = x.dims4()?;
        let n = (b * h * w) as f64;
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        if engine::uses_engine(x, &self.gamma) && self.beta.dtype() == DType::F32 {
            // The engine's fused op: one pass for the statistics, one for the output.
            let (y, mean, var) =
                engine::bn::batch_norm_train(x, &self.gamma, &self.beta, self.eps, relu)?;
            self.record_batch_stats(mean, var, b * h * w)?;
            return Ok(y);
        }
        // Statistics over batch and space, per channel.
        let xc = x.transpose(0, 1)?.reshape((c, b * h * w))?;
        let mean = xc.mean_keepdim(D::Minus1)?;
        let centred = xc.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var.clone() + self.eps)?.sqrt()?.recip()?;
        let y = centred
            .broadcast_mul(&inv)?
            .broadcast_mul(&self.gamma.reshape((c, 1))?)?
            .broadcast_add(&self.beta.reshape((c, 1))?)?;
        let y = y.reshape((c, b, h, w))?.transpose(0, 1)?;
        self.update_running(
            &mean.detach().flatten_all()?,
            &var.detach().flatten_all()?,
            unbias,
        )?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// Folds a batch's per-channel mean and biased variance (over `n`
    /// values per channel) into the running statistics.
    pub fn record_batch_stats(&self, mean: Vec<f32>, var: Vec<f32>, n: usize) -> Result<()> {
        // The layer's channel count, which the vectors must match.
        let c = self.gamma.dim(0)?;
        let n = n as f64;
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let dev = self.running_mean.device();
        let mean = Tensor::from_vec(mean, c, dev)?;
        let var = Tensor::from_vec(var, c, dev)?;
        self.update_running(&mean, &var, unbias)
    }

    /// Running statistics (unbiased variance, as PyTorch), outside the graph.
    fn update_running(&self, mean: &Tensor, var: &Tensor, unbias: f64) -> Result<()> {
        let rm = ((self.running_mean.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - BN_MOMENTUM))?
            + (var * (BN_MOMENTUM * unbias))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }
}

/// Convolution (or transposed convolution), BatchNorm, ReLU.
#[derive(Clone, Debug)]
pub struct ConvBnRelu {
    pub spec: LayerSpec,
    pub weight: Tensor,
    pub bn: BatchNorm,
}

impl ConvBnRelu {
    pub fn new(spec: &LayerSpec, eps: f64, vb: &VarBuilder) -> Result<Self> {
        let weight = vb.get(spec.weight_shape().to_vec(), &spec.weight_name())?;
        let bn = BatchNorm::new(spec.cout, eps, &spec.prefix, vb)?;
        Ok(ConvBnRelu {
            spec: spec.clone(),
            weight,
            bn,
        })
    }

    pub fn conv(&self, x: &Tensor) -> Result<Tensor> {
        apply_op(self.spec.op, self.spec.k, x, &self.weight)
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        forward_layers(std::slice::from_ref(self), x, train)
    }

    /// This layer for [`engine::train_chain`].
    fn train_layer(&self) -> engine::TrainLayer<'_> {
        let pad = self.spec.k / 2;
        engine::TrainLayer {
            conv: match self.spec.op {
                Op::Conv { stride } => engine::LayerConv::Conv { stride, pad },
                Op::Deconv => engine::LayerConv::Transpose {
                    stride: 2,
                    pad,
                    out_pad: 1,
                },
            },
            k: self.spec.k,
            weight: &self.weight,
            gamma: &self.bn.gamma,
            beta: &self.bn.beta,
            eps: self.bn.eps,
        }
    }

    /// Weight and bias with the BatchNorm's inference transform folded in.
    pub fn folded(&self) -> Result<(Tensor, Tensor)> {
        let (scale, shift) = self.bn.folded()?;
        let w = match self.spec.op {
            Op::Conv { .. } => {
                self.weight
                    .broadcast_mul(&scale.reshape((self.spec.cout, 1, 1, 1))?)?
            }
            Op::Deconv => {
                self.weight
                    .broadcast_mul(&scale.reshape((1, self.spec.cout, 1, 1))?)?
            }
        };
        Ok((w, shift))
    }
}

/// `layers` applied in turn to `x`. In training on the engine's path they
/// run as one op ([`engine::train_chain`]: the feature maps' gradients stay
/// out of candle's gradient store), with the same results as layer by layer.
pub fn forward_layers(layers: &[ConvBnRelu], x: &Tensor, train: bool) -> Result<Tensor> {
    let chain = train
        && !layers.is_empty()
        && layers.iter().all(|l| {
            engine::uses_engine(x, &l.weight)
                && l.bn.gamma.dtype() == DType::F32
                && l.bn.beta.dtype() == DType::F32
        });
    if chain {
        let specs: Vec<_> = layers.iter().map(ConvBnRelu::train_layer).collect();
        let (y, stats) = engine::train_chain(&specs, x)?;
        for (l, s) in layers.iter().zip(stats) {
            l.bn.record_batch_stats(s.mean, s.var, s.count)?;
        }
        return Ok(y);
    }
    let mut h = x.clone();
    for l in layers {
        h = l.bn.forward_relu_t(&l.conv(&h)?, train)?;
    }
    Ok(h)
}

/// Runs one planned convolution through the engine.
pub fn apply_op(op: Op, k: usize, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match op {
        Op::Conv { stride } => engine::conv2d(x, w, stride, k / 2),
        Op::Deconv => engine::conv_transpose2d(x, w, 2, k / 2, 1),
    }
}

/// Checks that a tensor holds only finite values.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    // 0 * x is NaN exactly when x is NaN or infinite.
    let s = (t.to_dtype(DType::F32)? * 0.0)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(s == 0.0)
}
