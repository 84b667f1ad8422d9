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
//! split across the threads, which stay in the pass from its first layer to
//! its last (`run_spread`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::config::ModelConfig;
use super::gcm::{head, Gcm, GcmOutput};
use super::layers::{ConvBnRelu, Op};
use super::score::gcm_score;
use crate::engine;
use crate::engine::conv::{ConvPlan, OutPtr, Split};
use crate::engine::{ConvGeom, Isa, LayerConv};

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
        self.forward_scaled(scaled)
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
    /// The pass over `plans` ([`schedule`]).
    steps: Vec<Step>,
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
                let pad = l.k / 2;
                let conv = match l.op {
                    Op::Conv { stride } => LayerConv::Conv { stride, pad },
                    Op::Deconv => LayerConv::Transpose {
                        stride: 2,
                        pad,
                        out_pad: 1,
                    },
                };
                let (_, cout) = conv.channels((l.weight.dim(0)?, l.weight.dim(1)?));
                let g = ConvGeom::new(shape, cout, l.k, conv);
                let p = ConvPlan::new(isa, &g, &w, Some(&bias), true);
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
                let conv = LayerConv::Conv {
                    stride: 1,
                    pad: k / 2,
                };
                let g = ConvGeom::new(s, cout, k, conv);
                let head = ConvPlan::new(isa, &g, w, Some(b), net.cfg.clipped);
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
            steps: schedule(&plans),
            plans,
            classes: n,
            images: batch,
        })
    }

    /// `x`: scaled input `[B, D, R, C]`; `cwm`: `[B, N, R, C]`.
    fn run(&mut self, x: &[f32], cwm: &mut [f32]) {
        let (plans, steps, classes) = (&self.plans, &self.steps[..], self.classes);
        if self.workers.is_empty() {
            // Fewer images than threads (so two threads or more): every
            // layer split across the threads (see `run_spread`).
            run_spread(plans, steps, &mut self.batch, x, cwm, classes);
            return;
        }
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
                    run_image(plans, steps, bufs, xi, oi, classes);
                }
            });
    }
}

/// A layer's plan in [`Plans`].
#[derive(Clone, Copy, Debug)]
enum PlanId {
    Encoder(usize),
    Decoder(usize, usize),
    Head(usize),
}

impl Plans {
    fn get(&self, id: PlanId) -> &ConvPlan {
        match id {
            PlanId::Encoder(i) => &self.encoder[i],
            PlanId::Decoder(j, i) => &self.decoders[j][i],
            PlanId::Head(j) => &self.heads[j],
        }
    }
}

// The buffers a step reads or writes, as indices into a [`Table`]: the
// input, the encoder's and the decoders' ping-pong pairs, the single-class
// head's output and the CWM.
const INPUT: usize = 0;
const ENC: [usize; 2] = [1, 2];
const DEC: [usize; 2] = [3, 4];
const HEAD: usize = 5;
const CWM: usize = 6;

/// One step of a pass.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A layer, from buffer `src` into buffer `dst` (never the same).
    Conv {
        plan: PlanId,
        src: usize,
        dst: usize,
    },
    /// A single-class head's maps (in `HEAD`) into class `class` of the CWM.
    Copy { class: usize },
}

/// The steps of one pass, in order: the encoder, then per decoder its
/// layers and its head, each layer reading the buffer the one before wrote.
fn schedule(p: &Plans) -> Vec<Step> {
    // Ping-pong through a pair of buffers; returns where the output is.
    fn chain(steps: &mut Vec<Step>, ids: &[PlanId], input: usize, pair: [usize; 2]) -> usize {
        let mut cur = input;
        for (i, &plan) in ids.iter().enumerate() {
            let dst = pair[i % 2];
            steps.push(Step::Conv {
                plan,
                src: cur,
                dst,
            });
            cur = dst;
        }
        cur
    }
    let mut steps = Vec::new();
    let ids: Vec<_> = (0..p.encoder.len()).map(PlanId::Encoder).collect();
    let enc = chain(&mut steps, &ids, INPUT, ENC);
    for (j, dec) in p.decoders.iter().enumerate() {
        // Every decoder reads the encoder's output and reuses the same pair.
        let ids: Vec<_> = (0..dec.len()).map(|i| PlanId::Decoder(j, i)).collect();
        let d = chain(&mut steps, &ids, enc, DEC);
        let plan = PlanId::Head(j);
        if p.heads.len() == 1 {
            steps.push(Step::Conv {
                plan,
                src: d,
                dst: CWM,
            });
        } else {
            steps.push(Step::Conv {
                plan,
                src: d,
                dst: HEAD,
            });
            steps.push(Step::Copy { class: j });
        }
    }
    steps
}

/// Raw views of one pass's buffers, indexed as the steps name them
/// (`INPUT` is only ever read).
struct Table([(OutPtr, usize); 7]);

impl Table {
    fn new(bufs: &mut Buffers, x: &[f32], cwm: &mut [f32]) -> Table {
        let view = |v: &mut [f32]| (OutPtr(v.as_mut_ptr()), v.len());
        let [e0, e1] = &mut bufs.enc;
        let [d0, d1] = &mut bufs.dec;
        Table([
            (OutPtr(x.as_ptr().cast_mut()), x.len()),
            view(e0),
            view(e1),
            view(d0),
            view(d1),
            view(&mut bufs.head),
            view(cwm),
        ])
    }

    /// Input and output of `plan` on `b` images: `src` read, `dst` written.
    ///
    /// # Safety
    /// The table's buffers must be alive, and nobody may write `src` while
    /// the returned slice is in use.
    unsafe fn conv(
        &self,
        plan: &ConvPlan,
        b: usize,
        src: usize,
        dst: usize,
    ) -> (&[f32], OutPtr, usize) {
        let (n_in, n_out) = (b * plan.cin * plan.h * plan.w, b * plan.out_len());
        let (s, d) = (self.0[src], self.0[dst]);
        assert!(
            src != dst && dst != INPUT && n_in <= s.1 && n_out <= d.1,
            "step buffers"
        );
        // SAFETY: `s` views a live buffer of `s.1 >= n_in` floats that is not
        // written meanwhile (the caller's promise); it is not `dst`.
        (
            unsafe { std::slice::from_raw_parts(s.0 .0, n_in) },
            d.0,
            n_out,
        )
    }
}

/// One step of a one-image pass on the calling thread alone (`scratch`: a
/// prepared input).
///
/// # Safety
/// As [`Table::conv`]; no other thread uses the table's buffers.
unsafe fn run_step(p: &Plans, step: Step, t: &Table, classes: usize, scratch: &mut [f32]) {
    match step {
        Step::Conv { plan, src, dst } => {
            let plan = p.get(plan);
            // SAFETY: the caller's promise; `dst` is this thread's alone.
            unsafe {
                let (x, out, n) = t.conv(plan, 1, src, dst);
                plan.run_image(x, scratch, std::slice::from_raw_parts_mut(out.0, n));
            }
        }
        // SAFETY: as above.
        Step::Copy { class } => unsafe { copy_head(p, t, 1, classes, class, 0, 1) },
    }
}

/// Images `b0..b1` of the single-class head's maps into class `class` of
/// the CWM (`b` images in the pass).
///
/// # Safety
/// As [`Table::conv`]; no other thread writes those images' maps of `class`.
unsafe fn copy_head(
    p: &Plans,
    t: &Table,
    b: usize,
    classes: usize,
    class: usize,
    b0: usize,
    b1: usize,
) {
    let rc = p.heads[0].oh * p.heads[0].ow;
    let ((head, hn), (cwm, cn)) = (t.0[HEAD], t.0[CWM]);
    assert!(
        b * rc <= hn && b * classes * rc <= cn && b1 <= b,
        "head buffers"
    );
    for bi in b0..b1 {
        // SAFETY: in bounds (asserted); the head buffer and the CWM are
        // different buffers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                head.0.add(bi * rc),
                cwm.0.add((bi * classes + class) * rc),
                rc,
            );
        }
    }
}

/// One image through the whole network on the calling thread.
fn run_image(
    p: &Plans,
    steps: &[Step],
    bufs: &mut Buffers,
    x: &[f32],
    cwm: &mut [f32],
    classes: usize,
) {
    let t = Table::new(bufs, x, cwm);
    for &step in steps {
        // SAFETY: the table views `bufs`, `x` and `cwm`, all borrowed here
        // for the whole pass, and only this thread uses them.
        unsafe { run_step(p, step, &t, classes, &mut bufs.scratch) };
    }
}

/// A batch smaller than the thread count, every layer split across the
/// threads. The threads stay in the pass from the first layer to the last:
/// each claims the layer's tasks (image x band of rows) one at a time from
/// a shared counter, and before the next layer waits, spinning briefly and
/// then yielding its core, until every task of this one is done. Handing
/// each layer to the pool instead put the idle thread to sleep and woke it
/// again between layers (on a 2-core Intel machine some 14 context
/// switches per image at batch 1). A thread that joins late takes whatever
/// is left, so no thread waits for another to arrive.
fn run_spread(
    p: &Plans,
    steps: &[Step],
    bufs: &mut Buffers,
    x: &[f32],
    cwm: &mut [f32],
    classes: usize,
) {
    let b = bufs.batch;
    let t = Table::new(bufs, x, cwm);
    // Per step: its tasks, the next one to claim, the ones finished.
    let work: Vec<Work> = steps
        .iter()
        .map(|s| match *s {
            Step::Conv { plan, src, dst } => {
                let plan = p.get(plan);
                Work::Conv {
                    plan,
                    split: plan.split(b),
                    src,
                    dst,
                }
            }
            Step::Copy { class } => Work::Copy { class },
        })
        .collect();
    let tasks = |w: &Work| match w {
        Work::Conv { split, .. } => split.tasks,
        Work::Copy { .. } => b,
    };
    let next: Vec<AtomicUsize> = steps.iter().map(|_| AtomicUsize::new(0)).collect();
    let done: Vec<AtomicUsize> = steps.iter().map(|_| AtomicUsize::new(0)).collect();
    let worker = || {
        for (i, w) in work.iter().enumerate() {
            if i > 0 {
                wait_for(&done[i - 1], tasks(&work[i - 1]));
            }
            loop {
                let task = next[i].fetch_add(1, Ordering::Relaxed);
                if task >= tasks(w) {
                    break;
                }
                match *w {
                    Work::Conv {
                        plan,
                        ref split,
                        src,
                        dst,
                    } => {
                        // SAFETY: the table views buffers borrowed for the
                        // whole pass; `src` was finished by the step before
                        // (awaited above) and nobody writes it in this
                        // step; each task writes its own (image, rows) of
                        // `dst`, claimed by one thread only.
                        unsafe {
                            let (x, out, n) = t.conv(plan, b, src, dst);
                            plan.run_task(x, split, task, out, n);
                        }
                    }
                    // SAFETY: as above; the task is image `task`'s copy.
                    Work::Copy { class } => unsafe {
                        copy_head(p, &t, b, classes, class, task, task + 1)
                    },
                }
                done[i].fetch_add(1, Ordering::Release);
            }
        }
    };
    rayon::scope(|s| {
        for _ in 1..rayon::current_num_threads() {
            s.spawn(|_| worker());
        }
        worker();
    });
}

/// A step of the spread pass with what its tasks need: a layer's plan and
/// its split into tasks (image x band of rows), or a head's copy (one task
/// per image).
enum Work<'a> {
    Conv {
        plan: &'a ConvPlan,
        split: Split,
        src: usize,
        dst: usize,
    },
    Copy {
        class: usize,
    },
}

/// Waits until `counter` reaches `target`: spins for a short while (a
/// layer's last tasks finish within microseconds), then yields the core.
fn wait_for(counter: &AtomicUsize, target: usize) {
    if counter.load(Ordering::Acquire) >= target {
        return;
    }
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    while counter.load(Ordering::Acquire) < target {
        if spins < SPIN_CHECK || start.elapsed() < SPIN_FOR {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
        } else {
            std::thread::yield_now();
        }
    }
}

/// How long a thread spins for the previous layer's last tasks before it
/// yields its core, and the spins before it first looks at the clock.
const SPIN_FOR: std::time::Duration = std::time::Duration::from_micros(50);
const SPIN_CHECK: u32 = 64;

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
                let workers = folded.plans.lock().unwrap()[&key].workers.len();
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
