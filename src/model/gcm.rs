//! The GCM network: encoder, (shared) decoder, per-class head.
//!
//! `forward` returns the class weight maps (CWM, `[B, N, R, C]`); the class
//! scores come from [`crate::model::score::gcm_score`], the plain mean of
//! `CWM x scaled input`, with no parameters of their own.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::config::ModelConfig;
use super::layers::{apply_op, forward_layers, ConvBnRelu, LayerSpec, Op};
use super::score::gcm_score;
use crate::rng::Rng;

/// The encoder's layers (Table 3, layers 1-10 by default).
pub fn encoder_plan(cfg: &ModelConfig) -> Vec<LayerSpec> {
    let mut plan = Vec::new();
    let mut cin = cfg.input_channels;
    for (stage, (&w, &depth)) in cfg
        .encoder_widths
        .iter()
        .zip(&cfg.encoder_depths)
        .enumerate()
    {
        for j in 0..depth {
            let stride = if stage > 0 && j == 0 { 2 } else { 1 };
            // Table 6's CNN widens all but the very first convolution.
            let w = match cfg.stem_width {
                Some(s) if plan.is_empty() => s,
                _ => w,
            };
            plan.push(LayerSpec {
                prefix: format!("encoder.{}", plan.len()),
                op: Op::Conv { stride },
                cin,
                cout: w,
                k: 3,
            });
            cin = w;
        }
    }
    plan
}

/// The encoder's layers built from `vb` (the GCM's and the baseline
/// CNN's, which share its plan and tensor names).
pub fn build_encoder(cfg: &ModelConfig, vb: &VarBuilder) -> Result<Vec<ConvBnRelu>> {
    encoder_plan(cfg)
        .iter()
        .map(|l| ConvBnRelu::new(l, cfg.bn_eps, vb))
        .collect()
}

/// A decoder's layers (Table 3, layers 11-14 by default), under `prefix`.
pub fn decoder_plan(cfg: &ModelConfig, prefix: &str) -> Vec<LayerSpec> {
    let mut plan = Vec::new();
    let widths = &cfg.encoder_widths;
    let mut cin = *widths.last().expect("validated: at least one stage");
    for stage in (0..widths.len() - 1).rev() {
        let w = widths[stage];
        plan.push(LayerSpec {
            prefix: format!("{prefix}.{}", plan.len()),
            op: Op::Deconv,
            cin,
            cout: w,
            k: 3,
        });
        for _ in 0..cfg.decoder_convs_per_stage {
            plan.push(LayerSpec {
                prefix: format!("{prefix}.{}", plan.len()),
                op: Op::Conv { stride: 1 },
                cin: w,
                cout: w,
                k: 3,
            });
        }
        cin = w;
    }
    plan
}

/// Prefixes of the decoders: `decoder` when shared, `decoders.<j>` per class otherwise.
pub fn decoder_prefixes(cfg: &ModelConfig) -> Vec<String> {
    if cfg.shared_decoder {
        vec!["decoder".to_string()]
    } else {
        (0..cfg.num_classes())
            .map(|j| format!("decoders.{j}"))
            .collect()
    }
}

/// All convolution layers of the network, encoder first (the CNN has no decoder).
pub fn full_plan(cfg: &ModelConfig) -> Vec<LayerSpec> {
    let mut plan = encoder_plan(cfg);
    if cfg.arch == super::config::Arch::Cnn {
        return plan;
    }
    for p in decoder_prefixes(cfg) {
        plan.extend(decoder_plan(cfg, &p));
    }
    plan
}

/// Channels entering the head.
pub fn head_channels(cfg: &ModelConfig) -> usize {
    cfg.encoder_widths[0]
}

/// What a tensor of the checkpoint is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Convolution weight (trained, weight decay applies).
    Weight { fan_in: usize },
    /// BatchNorm scale (trained, no weight decay).
    BnScale,
    /// BatchNorm shift or head bias (trained, no weight decay).
    Bias,
    /// BatchNorm running mean (not trained).
    RunningMean,
    /// BatchNorm running variance (not trained).
    RunningVar,
}

impl Role {
    pub fn trainable(self) -> bool {
        !matches!(self, Role::RunningMean | Role::RunningVar)
    }
}

/// Every tensor of a model's checkpoint: name, shape, role.
/// The trainable variables of `cfg`'s network (GCM or baseline CNN) in
/// `varmap`, with their checkpoint names and whether weight decay applies.
pub(crate) fn trainable(cfg: &ModelConfig, varmap: &VarMap) -> Vec<(String, Var, bool)> {
    let data = varmap.data().lock().expect("varmap lock");
    tensor_specs(cfg)
        .into_iter()
        .filter(|(_, _, r)| r.trainable())
        .filter_map(|(name, _, role)| {
            data.get(&name)
                .map(|v| (name, v.clone(), matches!(role, Role::Weight { .. })))
        })
        .collect()
}

pub fn tensor_specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Role)> {
    let mut out = Vec::new();
    for l in full_plan(cfg) {
        out.push((
            l.weight_name(),
            l.weight_shape().to_vec(),
            Role::Weight { fan_in: l.fan_in() },
        ));
        out.push((l.bn_name("weight"), vec![l.cout], Role::BnScale));
        out.push((l.bn_name("bias"), vec![l.cout], Role::Bias));
        out.push((l.bn_name("running_mean"), vec![l.cout], Role::RunningMean));
        out.push((l.bn_name("running_var"), vec![l.cout], Role::RunningVar));
    }
    if cfg.arch == super::config::Arch::Cnn {
        out.extend(super::cnn::fc_specs(cfg));
        return out;
    }
    let (n, w, k) = (cfg.num_classes(), head_channels(cfg), cfg.head_kernel);
    out.push((
        "head.weight".into(),
        vec![n, w, k, k],
        Role::Weight { fan_in: w * k * k },
    ));
    out.push(("head.bias".into(), vec![n], Role::Bias));
    out
}

/// Fresh, seeded parameters (He-normal convolutions, BN at identity, zero biases)
/// in a `VarMap`, ready for training.
pub fn init_varmap(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("fresh varmap");
        for (i, (name, shape, role)) in tensor_specs(cfg).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = match role {
                Role::Weight { fan_in } => {
                    let mut rng = Rng::derive(seed, i as u64);
                    // The head is linear (no ReLU after it): gain 1 instead of 2.
                    let linear = name.starts_with("head.") || name.starts_with("fc.");
                    let gain = if linear { 1.0 } else { 2.0 };
                    let std = (gain / fan_in as f64).sqrt();
                    (0..n).map(|_| (rng.normal() * std) as f32).collect()
                }
                Role::BnScale | Role::RunningVar => vec![1.0; n],
                Role::Bias | Role::RunningMean => vec![0.0; n],
            };
            let t = Tensor::from_vec(values, shape, device)?;
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}

/// The GCM network.
#[derive(Clone, Debug)]
pub struct Gcm {
    cfg: ModelConfig,
    encoder: Vec<ConvBnRelu>,
    decoders: Vec<Vec<ConvBnRelu>>,
    head_w: Tensor,
    head_b: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
}

/// The network's outputs for one batch.
#[derive(Clone, Debug)]
pub struct GcmOutput {
    /// The input after the model's scaling, `[B, D, R, C]`.
    pub scaled: Tensor,
    /// Class weight maps, `[B, N, R, C]`.
    pub cwm: Tensor,
    /// Class scores (mean of each CCM), `[B, N]`.
    pub scores: Tensor,
}

impl Gcm {
    /// Builds the network; `vb` must hold every tensor of [`tensor_specs`].
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.arch != super::config::Arch::Gcm {
            candle_core::bail!(
                "model.arch: {:?} is not a GCM (this command needs a GCM model)",
                cfg.arch.name()
            );
        }
        let eps = cfg.bn_eps;
        let encoder = build_encoder(cfg, &vb)?;
        let decoders = decoder_prefixes(cfg)
            .iter()
            .map(|p| {
                decoder_plan(cfg, p)
                    .iter()
                    .map(|l| ConvBnRelu::new(l, eps, &vb))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let (n, w, k) = (cfg.num_classes(), head_channels(cfg), cfg.head_kernel);
        let head_w = vb.get((n, w, k, k), "head.weight")?;
        let head_b = vb.get(n, "head.bias")?;
        let (scale_a, scale_b) = scaling_tensors(cfg, vb.device())?;
        Ok(Gcm {
            cfg: cfg.clone(),
            encoder,
            decoders,
            head_w,
            head_b,
            scale_a,
            scale_b,
        })
    }

    /// A freshly initialised network and its variables (for training).
    pub fn init(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<(Self, VarMap)> {
        let varmap = init_varmap(cfg, seed, device)?;
        let net = Gcm::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        Ok((net, varmap))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Number of trained parameters, counted from the built layers.
    pub fn num_parameters(&self) -> usize {
        let layers = self.encoder.iter().chain(self.decoders.iter().flatten());
        let convs: usize = layers
            .map(|l| l.weight.elem_count() + l.bn.gamma.elem_count() + l.bn.beta.elem_count())
            .sum();
        convs + self.head_w.elem_count() + self.head_b.elem_count()
    }

    pub fn encoder(&self) -> &[ConvBnRelu] {
        &self.encoder
    }
    pub fn decoders(&self) -> &[Vec<ConvBnRelu>] {
        &self.decoders
    }
    pub fn head(&self) -> (&Tensor, &Tensor) {
        (&self.head_w, &self.head_b)
    }

    /// Applies the model's input scaling to raw `[B, D, R, C]` input in [0, 1].
    pub fn scale_input(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale_a)?.broadcast_add(&self.scale_b)
    }

    /// Class weight maps `[B, N, R, C]` for scaled input.
    pub fn cwm(&self, scaled: &Tensor, train: bool) -> Result<Tensor> {
        self.cwm_with(scaled, train, None)
    }

    /// [`Gcm::cwm`], with `before_head` (when given) applied to the
    /// decoder's output just before the head (to each decoder's output when
    /// every class has its own): training's dropout.
    fn cwm_with(
        &self,
        scaled: &Tensor,
        train: bool,
        mut before_head: Option<&mut BeforeHead>,
    ) -> Result<Tensor> {
        let h = forward_layers(&self.encoder, scaled, train)?;
        let k = self.cfg.head_kernel;
        let mut decode = |dec: &[ConvBnRelu], h: &Tensor| -> Result<Tensor> {
            let d = forward_layers(dec, h, train)?;
            match before_head.as_mut() {
                Some(f) => f(&d),
                None => Ok(d),
            }
        };
        let cwm = if self.decoders.len() == 1 {
            let d = decode(&self.decoders[0], &h)?;
            head(&d, &self.head_w, &self.head_b, k)?
        } else {
            let mut maps = Vec::with_capacity(self.decoders.len());
            for (j, dec) in self.decoders.iter().enumerate() {
                let d = decode(dec, &h)?;
                maps.push(head(
                    &d,
                    &self.head_w.narrow(0, j, 1)?,
                    &self.head_b.narrow(0, j, 1)?,
                    k,
                )?);
            }
            Tensor::cat(&maps, 1)?
        };
        if self.cfg.clipped {
            cwm.relu()
        } else {
            Ok(cwm)
        }
    }

    /// Scaling, CWM and scores for raw input in [0, 1].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<GcmOutput> {
        self.forward_with(x, train, None)
    }

    /// The training forward pass with `before_head` applied to the
    /// decoder's output (see [`Gcm::cwm_with`]); batch statistics in the
    /// normalisation layers, as `forward_t(x, true)`.
    pub fn forward_train(&self, x: &Tensor, before_head: &mut BeforeHead) -> Result<GcmOutput> {
        self.forward_with(x, true, Some(before_head))
    }

    fn forward_with(
        &self,
        x: &Tensor,
        train: bool,
        before_head: Option<&mut BeforeHead>,
    ) -> Result<GcmOutput> {
        let scaled = self.scale_input(x)?;
        let cwm = self.cwm_with(&scaled, train, before_head)?;
        let scores = gcm_score(&cwm, &scaled)?;
        Ok(GcmOutput {
            scaled,
            cwm,
            scores,
        })
    }

    /// The trainable variables with their checkpoint names and whether weight
    /// decay applies to them.
    pub fn trainable(&self, varmap: &VarMap) -> Vec<(String, Var, bool)> {
        trainable(&self.cfg, varmap)
    }
}

/// What training applies to the decoder's output before the head (dropout).
pub type BeforeHead<'a> = dyn FnMut(&Tensor) -> Result<Tensor> + 'a;

/// The per-class head: a `k x k` convolution to one map per class, with bias.
pub fn head(x: &Tensor, w: &Tensor, b: &Tensor, k: usize) -> Result<Tensor> {
    let y = apply_op(Op::Conv { stride: 1 }, k, x, w)?;
    y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
}

/// `(a, b)` as `[1, D, 1, 1]` tensors with `scaled = a * x + b`.
pub fn scaling_tensors(cfg: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = cfg.input_channels;
    let ab = cfg.scaling.affine(d);
    let a: Vec<f32> = ab.iter().map(|p| p.0).collect();
    let b: Vec<f32> = ab.iter().map(|p| p.1).collect();
    Ok((
        Tensor::from_vec(a, (1, d, 1, 1), device)?,
        Tensor::from_vec(b, (1, d, 1, 1), device)?,
    ))
}

/// All tensors of a `VarMap` by name (for saving).
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn cifar_table3_counts_162k_parameters() {
        let cfg = ModelConfig::table3(32, 32, 3, classes(10));
        let (net, _) = Gcm::init(&cfg, 0, &Device::Cpu).unwrap();
        let n = net.num_parameters();
        assert!((161_000..=163_000).contains(&n), "{n} parameters");
        // Layer count of Table 3: 10 encoder + 4 decoder layers.
        assert_eq!(net.encoder().len(), 10);
        assert_eq!(net.decoders()[0].len(), 4);
    }

    #[test]
    fn cwm_has_input_resolution_for_odd_multiples() {
        for (r, c, d, n, shared) in [(12, 20, 1, 2, true), (8, 4, 3, 3, false)] {
            let mut cfg = ModelConfig::table3(r, c, d, classes(n));
            cfg.encoder_widths = vec![4, 6, 8];
            cfg.shared_decoder = shared;
            let (net, _) = Gcm::init(&cfg, 1, &Device::Cpu).unwrap();
            let x = Tensor::rand(0f32, 1.0, (2, d, r, c), &Device::Cpu).unwrap();
            let out = net.forward_t(&x, false).unwrap();
            assert_eq!(out.cwm.dims(), &[2, n, r, c]);
            assert_eq!(out.scores.dims(), &[2, n]);
        }
    }

    #[test]
    fn unshared_decoder_has_one_decoder_per_class() {
        let mut cfg = ModelConfig::table3(8, 8, 1, classes(3));
        cfg.shared_decoder = false;
        let names: Vec<String> = tensor_specs(&cfg).into_iter().map(|t| t.0).collect();
        assert!(names.contains(&"decoders.2.3.conv.weight".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("decoder.")));
    }

    #[test]
    fn forward_train_applies_the_function_before_the_head() {
        for shared in [true, false] {
            let mut cfg = ModelConfig::table3(8, 8, 1, classes(3));
            cfg.encoder_widths = vec![4, 6, 8];
            cfg.shared_decoder = shared;
            let (net, varmap) = Gcm::init(&cfg, 2, &Device::Cpu).unwrap();
            let bias = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap();
            varmap.data().lock().unwrap()["head.bias"]
                .set(&bias)
                .unwrap();
            let x = Tensor::rand(0f32, 1.0, (2, 1, 8, 8), &Device::Cpu).unwrap();
            let plain = net.forward_t(&x, true).unwrap();
            // The identity gives forward_t(x, true), called once per decoder.
            let mut calls = 0;
            let same = net
                .forward_train(&x, &mut |d: &Tensor| {
                    calls += 1;
                    assert_eq!(d.dims(), &[2, 4, 8, 8]);
                    Ok(d.clone())
                })
                .unwrap();
            assert_eq!(calls, if shared { 1 } else { 3 });
            let diff = (&same.scores - &plain.scores)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0);
            // Zeroed decoder output: every weight map is its head bias.
            let zero = net
                .forward_train(&x, &mut |d: &Tensor| d.zeros_like())
                .unwrap();
            let maps = zero.cwm.flatten_from(2).unwrap().to_vec3::<f32>().unwrap();
            let bias = [0.5f32, -1.0, 2.0];
            for img in &maps {
                for (j, m) in img.iter().enumerate() {
                    assert!(m.iter().all(|&v| v == bias[j]), "class {j}");
                }
            }
        }
    }

    #[test]
    fn clipped_variant_has_no_negative_weights() {
        let mut cfg = ModelConfig::table3(8, 8, 1, classes(2));
        cfg.clipped = true;
        let (net, _) = Gcm::init(&cfg, 2, &Device::Cpu).unwrap();
        let x = Tensor::rand(0f32, 1.0, (3, 1, 8, 8), &Device::Cpu).unwrap();
        let cwm = net.forward_t(&x, false).unwrap().cwm;
        let min = cwm.flatten_all().unwrap().min(0).unwrap();
        assert!(min.to_scalar::<f32>().unwrap() >= 0.0);
    }

    #[test]
    fn init_is_reproducible_per_seed() {
        let cfg = ModelConfig::table3(8, 8, 1, classes(2));
        let a = varmap_tensors(&init_varmap(&cfg, 5, &Device::Cpu).unwrap());
        let b = varmap_tensors(&init_varmap(&cfg, 5, &Device::Cpu).unwrap());
        let c = varmap_tensors(&init_varmap(&cfg, 6, &Device::Cpu).unwrap());
        let get = |m: &HashMap<String, Tensor>| {
            m["encoder.0.conv.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get(&a), get(&b));
        assert_ne!(get(&a), get(&c));
    }
}
