//! The planned executor of a [`FoldedGcm`] on the CPU.
//!
//! The whole network is planned once per batch size and input size
//! ([`crate::engine::conv::ConvPlan`] per layer, buffers allocated once) and
//! reused for every frame. A batch of at least one image per thread runs
//! depth-first, each thread taking whole images through the whole network so
//! an image's feature maps stay in that core's cache (on one thread, every
//! batch); fewer images than threads run layer by layer with every layer
//! split across the threads, which stay in the pass from its first layer to
//! its last (`run_spread`).

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Result;
use rayon::prelude::*;

use super::folded::{FoldedGcm, FoldedLayer};
use crate::engine::conv::{ConvPlan, OutPtr, Split};
use crate::engine::{ConvGeom, Isa, LayerConv};

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
pub(super) struct Executor {
    plans: Plans,
    /// The pass over `plans` ([`schedule`]).
    steps: Vec<Step>,
    pub(super) classes: usize,
    images: usize,
    /// Whole-batch buffers (layer-by-layer mode).
    batch: Buffers,
    /// One-image buffers per thread (depth-first mode); empty when the batch
    /// is smaller than the thread count.
    workers: Vec<Buffers>,
}

impl Executor {
    /// Threads with one-image buffers (depth-first mode); 0 when the
    /// batch runs layer by layer.
    #[cfg(test)]
    pub(super) fn depth_first_workers(&self) -> usize {
        self.workers.len()
    }

    pub(super) fn new(
        net: &FoldedGcm,
        batch: usize,
        (d, r, c): (usize, usize, usize),
    ) -> Result<Executor> {
        let isa = Isa::detect();
        let plan_chain = |layers: &[FoldedLayer], mut shape: (usize, usize, usize)| {
            let mut out = Vec::with_capacity(layers.len());
            for l in layers {
                let w = l.weight.flatten_all()?.to_vec1::<f32>()?;
                let bias = l.bias.to_vec1::<f32>()?;
                let conv = l.conv();
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
        let k = net.config().head_kernel;
        let n = net.config().num_classes();
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
                let head = ConvPlan::new(isa, &g, w, Some(b), net.config().clipped);
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
    pub(super) fn run(&mut self, x: &[f32], cwm: &mut [f32]) {
        let pass = Pass {
            p: &self.plans,
            steps: &self.steps,
            classes: self.classes,
        };
        if self.workers.is_empty() {
            // Fewer images than threads (so two threads or more): every
            // layer split across the threads (see `run_spread`).
            run_spread(pass, &mut self.batch, x, cwm);
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
                    run_image(pass, bufs, xi, oi);
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

/// What a pass runs: the plans, their schedule and the number of classes.
#[derive(Clone, Copy)]
struct Pass<'a> {
    p: &'a Plans,
    steps: &'a [Step],
    classes: usize,
}

/// One image through the whole network on the calling thread.
fn run_image(pass: Pass, bufs: &mut Buffers, x: &[f32], cwm: &mut [f32]) {
    let Pass { p, steps, classes } = pass;
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
/// again between layers (the context switches that cost are in
/// BENCHMARKS.md, "Changes kept"). A thread that joins late takes whatever
/// is left, so no thread waits for another to arrive.
fn run_spread(pass: Pass, bufs: &mut Buffers, x: &[f32], cwm: &mut [f32]) {
    let Pass { p, steps, classes } = pass;
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
