//! The baseline CNN of the GCM paper's Table 6: the GCM's encoder widened
//! to 16 / 18 / 37 / 74 channels, global average pooling (GAP), one fully
//! connected layer; softmax on top in training. About 164K parameters for
//! 32 x 32 RGB input and 10 classes, against the GCM's 162K.
//!
//! It exists to compare evidence methods on the same data: CAM, Grad-CAM,
//! Guided Backprop and Guided Grad-CAM (`crate::methods`) need a network
//! whose score is *not* its own evidence. Its layers are the GCM's
//! ([`ConvBnRelu`] on the engine's convolutions), its checkpoint is the same
//! format (`model.json` with `"arch": "cnn"`, the encoder's tensors, then
//! `fc.weight` `[N, K]` and `fc.bias` `[N]`), and it is trained by the same
//! loop.
//!
//! With GAP + FC the class score is a mean over space:
//! `score_c = sum_k w_ck mean_xy f_k(x, y) + b_c = mean_xy CAM_c(x, y) + b_c`,
//! which is what makes CAM exact for this network (see `methods::cam`).

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::config::{Arch, ModelConfig};
use super::gcm::{build_encoder, encoder_plan, init_varmap, scaling_tensors, trainable, Role};
use super::layers::{forward_layers, ConvBnRelu};

/// The fully connected layer's tensors: name, shape, role.
pub fn fc_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Role)> {
    let k = feature_channels(cfg);
    let n = cfg.num_classes();
    vec![
        ("fc.weight".into(), vec![n, k], Role::Weight { fan_in: k }),
        ("fc.bias".into(), vec![n], Role::Bias),
    ]
}

/// Channels of the last feature maps (the encoder's output).
pub fn feature_channels(cfg: &ModelConfig) -> usize {
    encoder_plan(cfg).last().map_or(0, |l| l.cout)
}

/// The Table 6 network.
#[derive(Clone, Debug)]
pub struct Cnn {
    cfg: ModelConfig,
    encoder: Vec<ConvBnRelu>,
    fc_w: Tensor,
    fc_b: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
}

/// The CNN's outputs for one batch.
#[derive(Clone, Debug)]
pub struct CnnOutput {
    /// The input after the model's scaling, `[B, D, R, C]`.
    pub scaled: Tensor,
    /// The last convolution block's output `[B, K, R / f, C / f]`.
    pub features: Tensor,
    /// Class scores (logits), `[B, N]`.
    pub scores: Tensor,
}

impl Cnn {
    /// Builds the network; `vb` must hold every tensor of [`super::gcm::tensor_specs`].
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.arch != Arch::Cnn {
            candle_core::bail!("model.arch: {:?} is not a cnn", cfg.arch.name());
        }
        let encoder = build_encoder(cfg, &vb)?;
        let (n, k) = (cfg.num_classes(), feature_channels(cfg));
        let fc_w = vb.get((n, k), "fc.weight")?;
        let fc_b = vb.get(n, "fc.bias")?;
        let (scale_a, scale_b) = scaling_tensors(cfg, vb.device())?;
        Ok(Cnn {
            cfg: cfg.clone(),
            encoder,
            fc_w,
            fc_b,
            scale_a,
            scale_b,
        })
    }

    /// A freshly initialised network and its variables (for training).
    pub fn init(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<(Self, VarMap)> {
        let varmap = init_varmap(cfg, seed, device)?;
        let net = Cnn::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        Ok((net, varmap))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn encoder(&self) -> &[ConvBnRelu] {
        &self.encoder
    }

    /// The fully connected layer: weight `[N, K]`, bias `[N]`.
    pub fn fc(&self) -> (&Tensor, &Tensor) {
        (&self.fc_w, &self.fc_b)
    }

    /// Number of trained parameters, counted from the built layers.
    pub fn num_parameters(&self) -> usize {
        let convs: usize = self
            .encoder
            .iter()
            .map(|l| l.weight.elem_count() + l.bn.gamma.elem_count() + l.bn.beta.elem_count())
            .sum();
        convs + self.fc_w.elem_count() + self.fc_b.elem_count()
    }

    /// Applies the model's input scaling to raw `[B, D, R, C]` input in [0, 1].
    pub fn scale_input(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale_a)?.broadcast_add(&self.scale_b)
    }

    /// The last feature maps for scaled input.
    pub fn features(&self, scaled: &Tensor, train: bool) -> Result<Tensor> {
        forward_layers(&self.encoder, scaled, train)
    }

    /// Inference-mode feature maps with `relu` in place of every ReLU (the
    /// evidence methods' hook: Guided Backprop changes the ReLU's backward).
    /// With `Tensor::relu` it equals `features(scaled, false)`.
    pub fn features_with(
        &self,
        scaled: &Tensor,
        relu: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut h = scaled.clone();
        for i in 0..self.encoder.len() {
            h = self.layer(i, &h, relu)?;
        }
        Ok(h)
    }

    /// Encoder layer `i` in inference mode (convolution, BatchNorm with its
    /// running statistics, then `relu`).
    pub fn layer(
        &self,
        i: usize,
        h: &Tensor,
        relu: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let l = &self.encoder[i];
        let (scale, shift) = l.bn.folded()?;
        let c = l.spec.cout;
        let y = l
            .conv(h)?
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
        relu(&y)
    }

    /// GAP then the fully connected layer: `[B, K, h, w]` -> `[B, N]`.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        features
            .mean((2, 3))?
            .matmul(&self.fc_w.t()?)?
            .broadcast_add(&self.fc_b.unsqueeze(0)?)
    }

    /// Scaling, features and scores for raw input in [0, 1].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<CnnOutput> {
        let scaled = self.scale_input(x)?;
        let features = self.features(&scaled, train)?;
        let scores = self.logits(&features)?;
        Ok(CnnOutput {
            scaled,
            features,
            scores,
        })
    }

    /// The trainable variables with their checkpoint names and whether weight
    /// decay applies to them.
    pub fn trainable(&self, varmap: &VarMap) -> Vec<(String, Var, bool)> {
        trainable(&self.cfg, varmap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn cifar_table6_counts_164k_parameters() {
        let cfg = ModelConfig::table6(32, 32, 3, classes(10));
        cfg.validate().unwrap();
        let (net, _) = Cnn::init(&cfg, 0, &Device::Cpu).unwrap();
        // 3x3 convolutions 3->16, 16->18, 18->18 x2, 18->37, 37->37 x2,
        // 37->74, 74->74 x2; BN scale and shift per channel; FC 74 x 10 + 10.
        let convs = 9 * (3 * 16 + 16 * 18 + 2 * 18 * 18 + 18 * 37 + 2 * 37 * 37)
            + 9 * (37 * 74 + 2 * 74 * 74);
        let bn = 2 * (16 + 3 * 18 + 3 * 37 + 3 * 74);
        let want = convs + bn + 74 * 10 + 10;
        assert_eq!(net.num_parameters(), want);
        assert!((163_000..=165_000).contains(&want), "{want}");
        assert_eq!(net.encoder().len(), 10);
        assert_eq!(net.encoder()[0].spec.cout, 16);
        assert_eq!(net.encoder()[1].spec.cout, 18);
    }

    #[test]
    fn scores_are_gap_then_fc_and_features_with_relu_match() {
        let mut cfg = ModelConfig::table6(8, 8, 1, classes(3));
        cfg.encoder_widths = vec![4, 5, 6];
        cfg.stem_width = Some(3);
        let (net, _) = Cnn::init(&cfg, 2, &Device::Cpu).unwrap();
        let x = Tensor::rand(0f32, 1.0, (2, 1, 8, 8), &Device::Cpu).unwrap();
        let out = net.forward_t(&x, false).unwrap();
        assert_eq!(out.features.dims(), &[2, 6, 2, 2]);
        assert_eq!(out.scores.dims(), &[2, 3]);
        let feats = out
            .features
            .flatten_from(2)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let (w, b) = net.fc();
        let (w, b) = (w.to_vec2::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let scores = out.scores.to_vec2::<f32>().unwrap();
        for bi in 0..2 {
            for c in 0..3 {
                let want: f32 = (0..6)
                    .map(|k| w[c][k] * feats[bi][k].iter().sum::<f32>() / 4.0)
                    .sum::<f32>()
                    + b[c];
                assert!((scores[bi][c] - want).abs() < 1e-5);
            }
        }
        let again = net.features_with(&out.scaled, &|t| t.relu()).unwrap();
        let d = crate::methods::max_abs_diff(&again, &out.features);
        assert!(d < 1e-5, "{d}");
    }
}
