//! Inference with BatchNorm folded into the convolutions.
//!
//! In inference mode BatchNorm is an affine map per channel, so it folds into
//! the preceding convolution's weights and a bias: `conv(x, w * s) + t` with
//! `s = gamma / sqrt(var + eps)`, `t = beta - mean * s`. That removes one full
//! pass over every feature map, and lets the engine fuse bias and ReLU into the
//! convolution itself.
//!
//! On the CPU the whole network is planned once per batch size and input size
//! ([`crate::engine::conv::ConvPlan`] per layer, buffers allocated once) and
//! reused for every frame. A batch of at least one image per thread runs
//! depth-first, each thread taking whole images through the whole network so
//! an image's feature maps stay in that core's cache (on one thread, every
//! batch); fewer images than threads run layer by layer with every layer
//! split across the threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::config::ModelConfig;
use super::gcm::{head, Gcm, GcmOutput};
use super::layers::{ConvBnRelu, Op};
use super::score::gcm_score;
use crate::engine;
use crate::engine::conv::ConvPlan;
use crate::engine::Isa;

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

    /// Scaling, CWM and scores for raw input in [0, 1], `[B, D, R, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<GcmOutput> {
        let scaled = x
            .broadcast_mul(&self.scale_a)?
            .broadcast_add(&self.scale_b)?;
        let cwm = self.cwm(&scaled)?;
        let scores = gcm_score(&cwm, &scaled)?;
        Ok(GcmOutput {
            scaled,
            cwm,
            scores,
        })
    }
}

/// The layers' plans for one input size.
#[derive(Debug)]
struct Plans {
    encoder: Vec<ConvPlan>,
    decoders: Vec<Vec<ConvPlan>>,
    /// One head per decoder: all classes (shared decoder) or one.
    heads: Vec<ConvPlan>,
}

/// Activation buffers for `batch` images.
#[derive(Debug)]
struct Buffers {
    batch: usize,
    enc: [Vec<f32>; 2],
    dec: [Vec<f32>; 2],
    head: Vec<f32>,
    scratch: Vec<f32>,
}

impl Buffers {
    fn new(p: &Plans, batch: usize) -> Buffers {
        let all = || {
            p.encoder
                .iter()
                .chain(p.decoders.iter().flatten())
                .chain(&p.heads)
        };
        let act = all().map(|q| q.out_len()).max().unwrap_or(0) * batch;
        let scratch = all().map(|q| q.scratch_len()).max().unwrap_or(0);
        Buffers {
            batch,
            enc: [vec![0.0; act], vec![0.0; act]],
            dec: [vec![0.0; act], vec![0.0; act]],
            head: vec![0.0; p.heads.first().map_or(0, |h| h.out_len()) * batch],
            scratch: vec![0.0; scratch],
        }
    }
}

/// The planned network with its buffers.
#[derive(Debug)]
struct Executor {
    plans: Plans,
    classes: usize,
    images: usize,
    /// Whole-batch buffers (layer-by-layer mode).
    batch: Buffers,
    /// One-image buffers per thread (depth-first mode); empty when the batch
    /// is smaller than the thread count.
    workers: Vec<Buffers>,
}

impl Executor {
    fn new(net: &FoldedGcm, batch: usize, (d, r, c): (usize, usize, usize)) -> Result<Executor> {
        let isa = Isa::detect();
        let plan_chain = |layers: &[FoldedLayer], mut shape: (usize, usize, usize)| {
            let mut out = Vec::with_capacity(layers.len());
            for l in layers {
                let w = l.weight.flatten_all()?.to_vec1::<f32>()?;
                let bias = l.bias.to_vec1::<f32>()?;
                let p = match l.op {
                    Op::Conv { stride } => {
                        let cout = l.weight.dim(0)?;
                        ConvPlan::conv(
                            isa,
                            shape,
                            &w,
                            (cout, l.k),
                            stride,
                            l.k / 2,
                            Some(&bias),
                            true,
                        )
                    }
                    Op::Deconv => {
                        let cout = l.weight.dim(1)?;
                        ConvPlan::conv_transpose(
                            isa,
                            shape,
                            &w,
                            (cout, l.k),
                            2,
                            l.k / 2,
                            (1, 1),
                            Some(&bias),
                            true,
                        )
                    }
                };
                shape = (p.cout, p.oh, p.ow);
                out.push(p);
            }
            Ok::<_, candle_core::Error>(out)
        };
        let encoder = plan_chain(&net.encoder, (d, r, c))?;
        let enc_shape = encoder.last().map_or((d, r, c), |p| (p.cout, p.oh, p.ow));
        let decoders = net
            .decoders
            .iter()
            .map(|dec| plan_chain(dec, enc_shape))
            .collect::<Result<Vec<_>>>()?;
        let k = net.cfg.head_kernel;
        let n = net.cfg.num_classes();
        let hw = net.head_w.flatten_all()?.to_vec1::<f32>()?;
        let hb = net.head_b.to_vec1::<f32>()?;
        let per = hw.len() / n;
        let heads = decoders
            .iter()
            .enumerate()
            .map(|(j, dec)| {
                let s = dec.last().map_or(enc_shape, |p| (p.cout, p.oh, p.ow));
                let (w, b, cout) = if decoders.len() == 1 {
                    (&hw[..], &hb[..], n)
                } else {
                    (&hw[j * per..(j + 1) * per], &hb[j..j + 1], 1)
                };
                let head = ConvPlan::conv(isa, s, w, (cout, k), 1, k / 2, Some(b), net.cfg.clipped);
                if (head.oh, head.ow) != (r, c) {
                    candle_core::bail!("planned CWM is {}x{}, input {r}x{c}", head.oh, head.ow)
                }
                Ok(head)
            })
            .collect::<Result<Vec<_>>>()?;
        let plans = Plans {
            encoder,
            decoders,
            heads,
        };
        let threads = rayon::current_num_threads();
        // Depth first (each thread runs whole images through the network)
        // whenever every thread has an image, one thread included: a batch
        // layer by layer walks activations of the whole batch through the
        // caches at every layer, and on one thread each layer's loop would
        // still be split and handed through the pool.
        let depth_first = batch >= threads;
        Ok(Executor {
            batch: Buffers::new(&plans, if depth_first { 0 } else { batch }),
            workers: if depth_first {
                (0..threads).map(|_| Buffers::new(&plans, 1)).collect()
            } else {
                Vec::new()
            },
            plans,
            classes: n,
            images: batch,
        })
    }

    /// `x`: scaled input `[B, D, R, C]`; `cwm`: `[B, N, R, C]`.
    fn run(&mut self, x: &[f32], cwm: &mut [f32]) {
        if self.workers.is_empty() {
            // Fewer images than threads (so two threads or more). The whole
            // pass as one job on the pool: each layer's parallel loop then
            // starts from a pool thread, instead of the caller handing every
            // layer to the pool and sleeping until it is done (a round trip
            // per layer; batch 1 on two threads, the daemon's case, runs
            // 1.3-1.4x faster so on an AMD Zen 5 machine: BENCHMARKS.md).
            let (plans, bufs, classes) = (&self.plans, &mut self.batch, self.classes);
            rayon::scope(|_| run_network(plans, bufs, x, cwm, classes, true));
            return;
        }
        let plans = &self.plans;
        let classes = self.classes;
        let batch = self.images;
        let per_in = x.len() / batch;
        let per_out = cwm.len() / batch;
        let chunk = batch.div_ceil(self.workers.len());
        self.workers
            .par_iter_mut()
            .zip(
                x.par_chunks(chunk * per_in)
                    .zip(cwm.par_chunks_mut(chunk * per_out)),
            )
            .for_each(|(bufs, (xs, outs))| {
                for (xi, oi) in xs.chunks(per_in).zip(outs.chunks_mut(per_out)) {
                    run_network(plans, bufs, xi, oi, classes, false);
                }
            });
    }
}

/// Runs every layer on `bufs.batch` images; `parallel`: split each layer
/// across the threads (else the calling thread does all the work).
fn run_network(
    p: &Plans,
    bufs: &mut Buffers,
    x: &[f32],
    cwm: &mut [f32],
    classes: usize,
    parallel: bool,
) {
    let b = bufs.batch;
    let apply = |plan: &ConvPlan, src: &[f32], dst: &mut [f32], scratch: &mut [f32]| {
        let dst = &mut dst[..b * plan.out_len()];
        if parallel {
            plan.run(src, b, dst);
        } else {
            plan.run_image(src, scratch, dst);
        }
    };
    // Ping-pong through a pair of buffers; returns where the output is.
    let chain = |plans: &[ConvPlan], x: &[f32], pair: &mut [Vec<f32>; 2], scratch: &mut [f32]| {
        let mut cur: Option<usize> = None;
        for (i, plan) in plans.iter().enumerate() {
            let (first, second) = pair.split_at_mut(1);
            let (other, dst) = if i % 2 == 0 {
                (&second[0], &mut first[0])
            } else {
                (&first[0], &mut second[0])
            };
            let src = match cur {
                None => x,
                Some(_) => &other[..b * plan.cin * plan.h * plan.w],
            };
            apply(plan, src, dst, scratch);
            cur = Some(i % 2);
        }
        cur
    };
    let enc = chain(&p.encoder, x, &mut bufs.enc, &mut bufs.scratch);
    let enc_len = p.encoder.last().map_or(x.len(), |q| b * q.out_len());
    let enc_out: &[f32] = match enc {
        None => x,
        Some(i) => &bufs.enc[i][..enc_len],
    };
    let (r, c) = (p.heads[0].oh, p.heads[0].ow);
    for (j, (dec, head)) in p.decoders.iter().zip(&p.heads).enumerate() {
        let d = chain(dec, enc_out, &mut bufs.dec, &mut bufs.scratch);
        let h: &[f32] = match d {
            None => enc_out,
            Some(i) => &bufs.dec[i][..b * head.cin * head.h * head.w],
        };
        if p.heads.len() == 1 {
            apply(head, h, cwm, &mut bufs.scratch);
        } else {
            apply(head, h, &mut bufs.head, &mut bufs.scratch);
            for bi in 0..b {
                let dst = (bi * classes + j) * r * c;
                cwm[dst..dst + r * c].copy_from_slice(&bufs.head[bi * r * c..(bi + 1) * r * c]);
            }
        }
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
            let workers = folded.plans.lock().unwrap()[&key].workers.len();
            (
                out.cwm.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                workers,
            )
        };
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        // A batch of three: depth first on 1 and 2 threads, layer by layer on 4.
        let x = Tensor::rand(0f32, 1.0, (3, 3, 12, 16), &Device::Cpu).unwrap();
        let (one, w1) = run(&x, 1);
        let (two, w2) = run(&x, 2);
        let (four, w4) = run(&x, 4);
        assert_eq!((w1, w2, w4), (1, 2, 0), "depth-first workers per pool");
        assert!(one.iter().any(|&v| v != 0.0));
        assert!(same(&one, &two) && same(&one, &four));
        // One image: depth first on one thread, layer by layer on two.
        let x = Tensor::rand(0f32, 1.0, (1, 3, 12, 16), &Device::Cpu).unwrap();
        let (one, w1) = run(&x, 1);
        let (two, w2) = run(&x, 2);
        assert_eq!((w1, w2), (1, 0), "depth-first workers per pool, one image");
        assert!(one.iter().any(|&v| v != 0.0));
        assert!(same(&one, &two));
    }
}
