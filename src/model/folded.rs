//! Inference with BatchNorm folded into the convolutions.
//!
//! In inference mode BatchNorm is an affine map per channel, so it folds into
//! the preceding convolution's weights and a bias: `conv(x, w * s) + t` with
//! `s = gamma / sqrt(var + eps)`, `t = beta - mean * s`. That removes one full
//! pass over every feature map, and lets the engine fuse bias and ReLU into the
//! convolution itself.
//!
//! On the CPU the folded network runs as a planned executor
//! ([`super::executor`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};

use super::config::ModelConfig;
use super::executor::Executor;
use super::gcm::{head, Gcm, GcmOutput};
use super::layers::{ConvBnRelu, Op};
use super::score::gcm_score;
use crate::engine;
use crate::engine::LayerConv;

/// One folded layer: convolution (or transposed convolution) + bias + ReLU.
#[derive(Clone, Debug)]
pub struct FoldedLayer {
    pub op: Op,
    pub k: usize,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl FoldedLayer {
    fn from_layer(l: &ConvBnRelu) -> Result<Self> {
        let (weight, bias) = l.folded()?;
        Ok(FoldedLayer {
            op: l.spec.op,
            k: l.spec.k,
            weight,
            bias,
        })
    }

    /// The layer's convolution: padding `k / 2`; the transposed one doubles
    /// the size (stride 2, output padding 1).
    pub fn conv(&self) -> LayerConv {
        let pad = self.k / 2;
        match self.op {
            Op::Conv { stride } => LayerConv::Conv { stride, pad },
            Op::Deconv => LayerConv::Transpose {
                stride: 2,
                pad,
                out_pad: 1,
            },
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.op {
            Op::Conv { stride } => {
                engine::conv2d_bias_relu(x, &self.weight, &self.bias, stride, self.k / 2, true)
            }
            Op::Deconv => engine::conv_transpose2d_bias_relu(
                x,
                &self.weight,
                &self.bias,
                2,
                self.k / 2,
                1,
                true,
            ),
        }
    }
}

/// A GCM network with BatchNorm folded in, for inference only.
#[derive(Clone, Debug)]
pub struct FoldedGcm {
    cfg: ModelConfig,
    pub encoder: Vec<FoldedLayer>,
    pub decoders: Vec<Vec<FoldedLayer>>,
    pub head_w: Tensor,
    pub head_b: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    /// Planned executors by `(batch, channels, rows, cols)`.
    plans: Arc<Mutex<HashMap<[usize; 4], Executor>>>,
}

impl FoldedGcm {
    pub fn new(net: &Gcm) -> Result<Self> {
        let fold = |ls: &[ConvBnRelu]| {
            ls.iter()
                .map(FoldedLayer::from_layer)
                .collect::<Result<Vec<_>>>()
        };
        let (head_w, head_b) = net.head();
        let (scale_a, scale_b) = super::gcm::scaling_tensors(net.config(), head_w.device())?;
        Ok(FoldedGcm {
            cfg: net.config().clone(),
            encoder: fold(net.encoder())?,
            decoders: net
                .decoders()
                .iter()
                .map(|d| fold(d))
                .collect::<Result<Vec<_>>>()?,
            head_w: head_w.detach(),
            head_b: head_b.detach(),
            scale_a,
            scale_b,
            plans: Arc::default(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Class weight maps for scaled input.
    pub fn cwm(&self, scaled: &Tensor) -> Result<Tensor> {
        let engine_runs = engine::uses_engine(scaled, &self.head_w)
            && self.encoder.iter().all(|l| l.weight.dtype() == DType::F32);
        if engine_runs {
            return self.cwm_planned(scaled);
        }
        let mut h = scaled.clone();
        for l in &self.encoder {
            h = l.forward(&h)?;
        }
        let k = self.cfg.head_kernel;
        let mut maps = Vec::with_capacity(self.decoders.len());
        for (j, dec) in self.decoders.iter().enumerate() {
            let mut d = h.clone();
            for l in dec {
                d = l.forward(&d)?;
            }
            maps.push(if self.decoders.len() == 1 {
                head(&d, &self.head_w, &self.head_b, k)?
            } else {
                head(
                    &d,
                    &self.head_w.narrow(0, j, 1)?,
                    &self.head_b.narrow(0, j, 1)?,
                    k,
                )?
            });
        }
        let cwm = if maps.len() == 1 {
            maps.pop().expect("one map")
        } else {
            Tensor::cat(&maps, 1)?
        };
        if self.cfg.clipped {
            cwm.relu()
        } else {
            Ok(cwm)
        }
    }

    /// The CPU path: the planned executor for this batch and input size.
    fn cwm_planned(&self, scaled: &Tensor) -> Result<Tensor> {
        let (b, d, r, c) = scaled.dims4()?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let key = [b, d, r, c];
        let exec = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Executor::new(self, b, (d, r, c))?)
            }
        };
        let n = exec.classes;
        let mut cwm = vec![0f32; b * n * r * c];
        engine::with_f32(scaled, |x| {
            exec.run(x, &mut cwm);
            Ok(())
        })?;
        Tensor::from_vec(cwm, (b, n, r, c), scaled.device())
    }

    /// The model's input scaling of raw input in [0, 1], `[B, D, R, C]`.
    pub fn scale(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale_a)?.broadcast_add(&self.scale_b)
    }

    /// Scaling, CWM and scores for raw input in [0, 1], `[B, D, R, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<GcmOutput> {
        self.forward_scaled(self.scale(x)?)
    }

    /// CWM and scores for input the model's scaling has been applied to.
    pub fn forward_scaled(&self, scaled: Tensor) -> Result<GcmOutput> {
        let cwm = self.cwm(&scaled)?;
        let scores = gcm_score(&cwm, &scaled)?;
        Ok(GcmOutput {
            scaled,
            cwm,
            scores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gcm::varmap_tensors;
    use candle_core::{DType, Device, Var};

    #[test]
    fn folded_equals_unfolded_in_eval_mode() {
        let mut cfg = ModelConfig::table3(12, 16, 3, vec!["a".into(), "b".into(), "c".into()]);
        cfg.encoder_widths = vec![4, 8, 8];
        for shared in [true, false] {
            cfg.shared_decoder = shared;
            let (net, vm) = Gcm::init(&cfg, 9, &Device::Cpu).unwrap();
            // Non-trivial BatchNorm statistics and affine parameters.
            let mut rng = crate::rng::Rng::new(4);
            for (name, t) in varmap_tensors(&vm) {
                if name.contains(".bn.") {
                    let n = t.elem_count();
                    let v: Vec<f32> = (0..n)
                        .map(|_| {
                            if name.ends_with("running_var") {
                                rng.range(0.5, 2.0) as f32
                            } else {
                                rng.range(-0.5, 0.5) as f32
                            }
                        })
                        .collect();
                    let data = vm.data().lock().unwrap();
                    let var: &Var = &data[&name];
                    var.set(&Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
            let folded = FoldedGcm::new(&net).unwrap();
            let x = Tensor::rand(0f32, 1.0, (3, 3, 12, 16), &Device::Cpu).unwrap();
            let a = net.forward_t(&x, false).unwrap();
            let b = folded.forward(&x).unwrap();
            for (p, q) in [(&a.cwm, &b.cwm), (&a.scores, &b.scores)] {
                let d = (p - q)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap();
                let d = d.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-4, "shared={shared}: max diff {d}");
            }
        }
    }

    /// Depth first (one thread, or as many threads as images) and layer by
    /// layer (more threads than images) give the same bits.
    #[test]
    fn executor_paths_agree_bit_for_bit() {
        let mut cfg = ModelConfig::table3(12, 16, 3, vec!["a".into(), "b".into()]);
        cfg.encoder_widths = vec![4, 8, 8];
        // One decoder for both classes, and one decoder per class (a head
        // per class, copied into the CWM).
        for shared in [true, false] {
            cfg.shared_decoder = shared;
            let (net, _vm) = Gcm::init(&cfg, 3, &Device::Cpu).unwrap();
            let run = |x: &Tensor, threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                // A fresh network per pool: executors are planned for the pool
                // they first run on.
                let folded = FoldedGcm::new(&net).unwrap();
                let out = pool.install(|| folded.forward(x)).unwrap();
                let key: [usize; 4] = x.dims4().unwrap().into();
                let workers = folded.plans.lock().unwrap()[&key].depth_first_workers();
                (
                    out.cwm.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    workers,
                )
            };
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            // A batch of three: depth first on 1 and 2 threads, spread over
            // the threads layer by layer on 4.
            let x = Tensor::rand(0f32, 1.0, (3, 3, 12, 16), &Device::Cpu).unwrap();
            let (one, w1) = run(&x, 1);
            let (two, w2) = run(&x, 2);
            let (four, w4) = run(&x, 4);
            assert_eq!((w1, w2, w4), (1, 2, 0), "depth-first workers per pool");
            assert!(one.iter().any(|&v| v != 0.0));
            assert!(
                same(&one, &two) && same(&one, &four),
                "shared decoder {shared}"
            );
            // One image: depth first on one thread, spread on two and three.
            let x = Tensor::rand(0f32, 1.0, (1, 3, 12, 16), &Device::Cpu).unwrap();
            let (one, w1) = run(&x, 1);
            let (two, w2) = run(&x, 2);
            let (three, w3) = run(&x, 3);
            assert_eq!(
                (w1, w2, w3),
                (1, 0, 0),
                "depth-first workers per pool, one image"
            );
            assert!(one.iter().any(|&v| v != 0.0));
            assert!(
                same(&one, &two) && same(&one, &three),
                "shared decoder {shared}, one image"
            );
        }
    }
}
