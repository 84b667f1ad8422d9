//! Convolution plans on plain `f32` slices in NCHW: the forward convolution,
//! the sub-pixel transposed convolution and the weight gradient.
//!
//! A plan is made once per layer and input size (weights packed for the
//! register tile, tap offsets, prepared-input geometry) and run many times on
//! caller-provided buffers, so the inference executor allocates nothing per
//! frame. The training ops make a plan per call; packing costs
//! `O(weights)`, small next to the convolution.
//!
//! Transposed convolution with stride `s` is run as `s * s` small direct
//! convolutions on the low-resolution input, one per output phase
//! `(Y mod s, X mod s)`, each with only the kernel taps that reach that phase:
//! no zero-stuffed input, `1 / s^2` of the multiply-adds of the naive
//! formulation.

use rayon::prelude::*;

use super::geom::{ConvGeom, LayerConv};
pub(crate) use super::kernels::OutPtr;
use super::kernels::{conv_tile, wgrad_kernel, ConvFn, ConvJob, WgradFn, WgradJob};
use super::simd::Isa;

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Rows of output per task so that there are at least a few tasks per
/// thread, but never fewer than `min_rows`.
fn rows_per_task(rows: usize, other_tasks: usize, min_rows: usize) -> usize {
    let want = rayon::current_num_threads() * 4;
    let splits = want.div_ceil(other_tasks.max(1)).max(1);
    rows.div_ceil(splits).max(min_rows)
}

/// Output rows a task needs so that a tile of `nv` vectors of `lanes`
/// positions covers distinct positions in the narrowest part.
fn min_task_rows(parts: &[Part], nv: usize, lanes: usize) -> usize {
    let narrowest = parts.iter().map(|p| p.ow).min().unwrap_or(1).max(1);
    nv.div_ceil(narrowest.div_ceil(lanes))
}

/// Geometry of a prepared input: `[cin][phases][rows][cols]` per image, with
/// `P[c][ph][r][q] = x[c][r - pad_top][q * step + ph - pad_left]` (zero outside).
#[derive(Clone, Debug)]
struct Prep {
    cin: usize,
    h: usize,
    w: usize,
    step: usize,
    phases: usize,
    rows: usize,
    cols: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Prep {
    fn img_len(&self) -> usize {
        self.cin * self.ch_len()
    }
    fn ch_len(&self) -> usize {
        self.phases * self.rows * self.cols
    }

    /// Fills `out` (`batch * img_len`) from NCHW `x`.
    fn fill(&self, x: &[f32], batch: usize, out: &mut [f32]) {
        let hw = self.h * self.w;
        out[..batch * self.img_len()]
            .par_chunks_mut(self.ch_len())
            .enumerate()
            .for_each(|(bc, dst)| self.fill_channel(&x[bc * hw..(bc + 1) * hw], dst));
    }

    /// Fills one image's prepared input (`img_len` floats) from its `[cin, h, w]`.
    fn fill_image(&self, x: &[f32], out: &mut [f32]) {
        let hw = self.h * self.w;
        for (c, dst) in out[..self.img_len()].chunks_mut(self.ch_len()).enumerate() {
            self.fill_channel(&x[c * hw..(c + 1) * hw], dst);
        }
    }

    /// Fills prepared rows `lo..hi` (of every channel and phase) of one image.
    fn fill_rows(&self, x: &[f32], out: &mut [f32], lo: usize, hi: usize) {
        let hw = self.h * self.w;
        for (c, dst) in out[..self.img_len()].chunks_mut(self.ch_len()).enumerate() {
            self.fill_channel_rows(&x[c * hw..(c + 1) * hw], dst, lo, hi);
        }
    }

    fn fill_channel(&self, src: &[f32], dst: &mut [f32]) {
        self.fill_channel_rows(src, dst, 0, self.rows)
    }

    fn fill_channel_rows(&self, src: &[f32], dst: &mut [f32], lo_row: usize, hi_row: usize) {
        let (h, w, step, pl) = (self.h, self.w, self.step, self.pad_left);
        for (ph, plane) in dst.chunks_mut(self.rows * self.cols).enumerate() {
            // Columns q with 0 <= q * step + ph - pad_left < w.
            let hi = (w + pl).saturating_sub(ph).div_ceil(step).min(self.cols);
            let lo = pl.saturating_sub(ph).div_ceil(step).min(hi);
            for (r, d) in plane
                .chunks_mut(self.cols)
                .enumerate()
                .take(hi_row)
                .skip(lo_row)
            {
                let iy = r as isize - self.pad_top as isize;
                if iy < 0 || iy >= h as isize {
                    d.fill(0.0);
                    continue;
                }
                let s = &src[iy as usize * w..(iy as usize + 1) * w];
                d[..lo].fill(0.0);
                d[hi..].fill(0.0);
                if step == 1 {
                    let first = lo + ph - pl;
                    d[lo..hi].copy_from_slice(&s[first..first + hi - lo]);
                } else {
                    for (q, v) in d[lo..hi].iter_mut().enumerate() {
                        *v = s[(lo + q) * step + ph - pl];
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Each thread's prepared-input buffer for per-image tasks (reused, so the
    /// training ops do not allocate it per call).
    static PREP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's prepared-input buffer of at least `n` floats.
fn with_prep<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    PREP.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < n {
            p.resize(n, 0.0);
        }
        f(&mut p[..n])
    })
}

/// Batches at least this many times the thread count run one image per task
/// (prepared input and output of an image stay in the core's cache).
const IMAGES_PER_THREAD: usize = 2;

/// How one [`ConvPlan::run`] is cut into tasks ([`ConvPlan::split`]).
#[derive(Clone, Copy, Debug)]
pub struct Split {
    /// Tasks in all: images x bands.
    pub tasks: usize,
    /// Output rows per band (the last may be shorter).
    rows: usize,
    /// Bands per image.
    bands: usize,
    /// Output rows of the tallest part.
    max_rows: usize,
}

/// Images summed into one partial weight gradient before the partials are
/// added in order (fixed, so the sum does not depend on the thread count).
const WGRAD_GROUP: usize = 2;

/// Packs `weight(o, ci, t)` as `[cout / ocb][cin][taps][ocb]`, zero beyond `cout`.
fn pack(
    cout: usize,
    cin: usize,
    taps: usize,
    ocb: usize,
    weight: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let nob = cout.div_ceil(ocb);
    let mut p = vec![0f32; nob * cin * taps * ocb];
    for ob in 0..nob {
        for ci in 0..cin {
            for t in 0..taps {
                for j in 0..ocb {
                    let o = ob * ocb + j;
                    if o < cout {
                        p[((ob * cin + ci) * taps + t) * ocb + j] = weight(o, ci, t);
                    }
                }
            }
        }
    }
    p
}

/// One phase (or the whole) of a convolution: taps, packed weights, output placement.
#[derive(Clone, Debug)]
struct Part {
    taps: Vec<usize>,
    w: Vec<f32>,
    oh: usize,
    ow: usize,
    x_row: usize,
    out_off: usize,
    out_row: usize,
    out_col: usize,
}

/// A planned convolution or transposed convolution for a fixed input size.
#[derive(Clone, Debug)]
pub struct ConvPlan {
    kernel: ConvFn,
    ocb: usize,
    /// Output rows a task needs so that the kernel's `NV` vectors of output
    /// positions are distinct ones: the kernel recomputes its last vector
    /// to fill the tile, so one 8-wide row per task on 16 lanes with `NV`
    /// 2 would do four times the useful work.
    min_task_rows: usize,
    prep: Prep,
    parts: Vec<Part>,
    bias: Option<Vec<f32>>,
    relu: bool,
    /// Output row `r` of every part reads prepared rows
    /// `r * row_step .. r * row_step + row_span`.
    row_step: usize,
    row_span: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    /// Output size.
    pub oh: usize,
    pub ow: usize,
}

/// Where a plan reads and writes, before its weights are packed: the
/// prepared input, and per part its placement and the kernel index
/// (`ky * k + kx`) of each tap.
struct Placement {
    prep: Prep,
    parts: Vec<(Part, Vec<usize>)>,
    row_step: usize,
    row_span: usize,
    oh: usize,
    ow: usize,
}

/// The prepared input of a strided convolution with `rows x cols`
/// prepared rows and columns per phase.
fn strided_prep(g: &ConvGeom, rows: usize, cols: usize) -> Prep {
    Prep {
        cin: g.cin,
        h: g.h,
        w: g.w,
        step: g.stride(),
        phases: g.stride().min(g.k),
        rows,
        cols,
        pad_top: g.pad(),
        pad_left: g.pad(),
    }
}

/// Offsets into a [`strided_prep`] input of the `k * k` taps, in
/// `ky * k + kx` order.
fn strided_taps(k: usize, stride: usize, rows: usize, cols: usize) -> Vec<usize> {
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            taps.push((kx % stride) * rows * cols + ky * cols + kx / stride);
        }
    }
    taps
}

/// A convolution as one part over its phase-split input.
fn conv_placement(g: &ConvGeom, lanes: usize) -> Placement {
    let (k, stride, pad) = (g.k, g.stride(), g.pad());
    assert!(
        g.h + 2 * pad >= k && g.w + 2 * pad >= k,
        "input smaller than the kernel"
    );
    let oh = (g.h + 2 * pad - k) / stride + 1;
    let ow = (g.w + 2 * pad - k) / stride + 1;
    let rows = (oh - 1) * stride + k;
    let cols = round_up(ow, lanes) + (k - 1) / stride + 1;
    let part = Part {
        taps: strided_taps(k, stride, rows, cols),
        w: Vec::new(),
        oh,
        ow,
        x_row: stride * cols,
        out_off: 0,
        out_row: ow,
        out_col: 1,
    };
    Placement {
        prep: strided_prep(g, rows, cols),
        parts: vec![(part, (0..k * k).collect())],
        row_step: stride,
        row_span: k,
        oh,
        ow,
    }
}

/// A transposed convolution as `stride * stride` output phases, each a
/// direct convolution of the unstrided input with the taps that reach it.
fn transpose_placement(g: &ConvGeom, (oph, opw): (usize, usize), lanes: usize) -> Placement {
    let (k, stride) = (g.k, g.stride());
    assert!(
        oph < stride && opw < stride,
        "output padding not below the stride"
    );
    let full = |n: usize, op: usize| ((n - 1) * stride + k + op) as isize - 2 * g.pad() as isize;
    assert!(
        full(g.h, oph) > 0 && full(g.w, opw) > 0,
        "empty transposed-convolution output"
    );
    let (oh, ow) = (full(g.h, oph) as usize, full(g.w, opw) as usize);
    let (s, p) = (stride as isize, g.pad() as isize);
    // Taps of phase r along one axis: (kernel index, input offset).
    let axis_taps = |r: usize| -> Vec<(usize, isize)> {
        (0..k)
            .filter(|&kk| (r as isize + p - kk as isize).rem_euclid(s) == 0)
            .map(|kk| (kk, (r as isize + p - kk as isize).div_euclid(s)))
            .collect()
    };
    let phase_taps: Vec<Vec<(usize, isize)>> = (0..stride).map(axis_taps).collect();
    let min_d = phase_taps.iter().flatten().map(|t| t.1).min().unwrap_or(0);
    let max_d = phase_taps.iter().flatten().map(|t| t.1).max().unwrap_or(0);
    let pad0 = (-min_d).max(0) as usize;
    let span = (max_d + pad0 as isize).max(0) as usize;
    let count = |n: usize, r: usize| if r < n { (n - r).div_ceil(stride) } else { 0 };
    let rows = count(oh, 0) + span;
    let cols = round_up(count(ow, 0), lanes) + span;
    let mut parts = Vec::new();
    for ry in 0..stride {
        for rx in 0..stride {
            let (ph, pw) = (count(oh, ry), count(ow, rx));
            if ph == 0 || pw == 0 {
                continue;
            }
            let mut taps = Vec::new();
            let mut kidx = Vec::new();
            for &(ky, dy) in &phase_taps[ry] {
                for &(kx, dx) in &phase_taps[rx] {
                    let r = (dy + pad0 as isize) as usize;
                    let c = (dx + pad0 as isize) as usize;
                    taps.push(r * cols + c);
                    kidx.push(ky * k + kx);
                }
            }
            let part = Part {
                taps,
                w: Vec::new(),
                oh: ph,
                ow: pw,
                x_row: cols,
                out_off: ry * ow + rx,
                out_row: stride * ow,
                out_col: stride,
            };
            parts.push((part, kidx));
        }
    }
    let prep = Prep {
        step: 1,
        phases: 1,
        pad_top: pad0,
        pad_left: pad0,
        ..strided_prep(g, rows, cols)
    };
    Placement {
        prep,
        parts,
        row_step: 1,
        row_span: span + 1,
        oh,
        ow,
    }
}

impl ConvPlan {
    /// Plans `g.conv` (PyTorch's layouts: weight `[cout, cin, k, k]` for a
    /// convolution, `[cin, cout, k, k]` for a transposed one), then
    /// `+ bias` and ReLU when asked.
    pub fn new(isa: Isa, g: &ConvGeom, weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Self {
        let out_pad = match g.conv {
            LayerConv::Transpose { out_pad, .. } => (out_pad, out_pad),
            LayerConv::Conv { .. } => (0, 0),
        };
        Self::with_out_pad(isa, g, out_pad, weight, bias, relu)
    }

    /// [`ConvPlan::new`] with a transposed convolution's output padding
    /// given per axis (the adjoint of a strided convolution may need two
    /// different ones); `out_pad` is not read for a convolution.
    pub fn with_out_pad(
        isa: Isa,
        g: &ConvGeom,
        out_pad: (usize, usize),
        weight: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Self {
        assert!(g.stride() >= 1 && g.k >= 1);
        assert_eq!(weight.len(), g.cout * g.cin * g.k * g.k, "weight size");
        let lanes = isa.lanes();
        let (placement, transposed) = match g.conv {
            LayerConv::Conv { .. } => (conv_placement(g, lanes), false),
            LayerConv::Transpose { .. } => (transpose_placement(g, out_pad, lanes), true),
        };
        let (cin, cout, kk) = (g.cin, g.cout, g.k * g.k);
        let (ocb, nv, kernel) = conv_tile(isa, cout);
        let parts: Vec<Part> = placement
            .parts
            .into_iter()
            .map(|(part, kidx)| Part {
                w: pack(cout, cin, kidx.len(), ocb, |o, ci, t| {
                    let first = if transposed {
                        ci * cout + o
                    } else {
                        o * cin + ci
                    };
                    weight[first * kk + kidx[t]]
                }),
                ..part
            })
            .collect();
        ConvPlan {
            kernel,
            ocb,
            min_task_rows: min_task_rows(&parts, nv, lanes),
            prep: placement.prep,
            parts,
            bias: bias.map(|b| b.to_vec()),
            relu,
            row_step: placement.row_step,
            row_span: placement.row_span,
            cin,
            cout,
            h: g.h,
            w: g.w,
            oh: placement.oh,
            ow: placement.ow,
        }
    }
    /// Floats of prepared input per image (scratch for [`ConvPlan::run_image`]).
    pub fn scratch_len(&self) -> usize {
        self.prep.img_len()
    }

    pub fn out_len(&self) -> usize {
        self.cout * self.oh * self.ow
    }

    /// Runs on `batch` NCHW images `x`, writing NCHW `out`, split across the
    /// threads. Allocates nothing once each thread's prepared-input buffer
    /// has grown to this plan's size.
    pub fn run(&self, x: &[f32], batch: usize, out: &mut [f32]) {
        // SAFETY: `out` is valid for `out.len()` writes (`run_raw` checks
        // that this is the output's size).
        unsafe { self.run_raw(x, batch, OutPtr(out.as_mut_ptr()), out.len()) }
    }

    /// [`ConvPlan::run`] into a new vector, without zero-filling it first:
    /// the kernels store every output element (every output channel, row
    /// and column of every part, and the parts of a transposed convolution
    /// tile its output), so the fill would be overwritten.
    pub fn run_new(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let n = batch * self.out_len();
        let mut out = Vec::<f32>::with_capacity(n);
        // SAFETY: the vector's buffer is valid for `n` writes; `run_raw`
        // writes each of the `n` elements (see above; the parity tests run
        // every plan into a NaN-filled buffer and find no NaN left), so all
        // are initialised when the length is set.
        unsafe {
            self.run_raw(x, batch, OutPtr(out.as_mut_ptr()), n);
            out.set_len(n);
        }
        out
    }

    /// Panics, before writing, unless `x` and `out_len` are the sizes of
    /// `batch` inputs and outputs.
    ///
    /// # Safety
    /// `outp` must be valid for writes of `out_len` floats.
    unsafe fn run_raw(&self, x: &[f32], batch: usize, outp: OutPtr, out_len: usize) {
        assert_eq!(x.len(), batch * self.cin * self.h * self.w, "input size");
        assert_eq!(out_len, batch * self.out_len(), "output size");
        if batch == 0 {
            return;
        }
        let split = self.split(batch);
        (0..split.tasks).into_par_iter().for_each(|t| {
            // SAFETY: the caller's `outp` is valid for `out_len` writes, which
            // is the output's size (checked above); tasks write disjoint
            // elements.
            unsafe { self.run_task(x, &split, t, outp, out_len) }
        });
    }

    /// How [`ConvPlan::run`] cuts `batch` images into tasks on the current
    /// pool: whole images per task when there are enough of them; otherwise
    /// bands of output rows, each task preparing just the input rows its
    /// band reads (no shared scratch).
    pub fn split(&self, batch: usize) -> Split {
        let max_rows = self.parts.iter().map(|p| p.oh).max().unwrap_or(1);
        let rpt = if batch >= IMAGES_PER_THREAD * rayon::current_num_threads() {
            max_rows
        } else {
            rows_per_task(max_rows, batch, self.min_task_rows)
        };
        let bands = max_rows.div_ceil(rpt);
        Split {
            tasks: batch * bands,
            rows: rpt,
            bands,
            max_rows,
        }
    }

    /// Task `t` of `split` on `x` (the whole batch's input): one image's
    /// band of output rows, on the calling thread.
    ///
    /// # Safety
    /// `outp` must be valid for writes of `out_len` floats, the size of the
    /// batch's output, and no other thread may run the same task at once
    /// (different tasks write disjoint elements).
    pub(crate) unsafe fn run_task(
        &self,
        x: &[f32],
        split: &Split,
        t: usize,
        outp: OutPtr,
        out_len: usize,
    ) {
        let in_img = self.cin * self.h * self.w;
        debug_assert!(t < split.tasks && x.len() >= split.tasks / split.bands * in_img);
        debug_assert_eq!(out_len, split.tasks / split.bands * self.out_len());
        let nob = self.cout.div_ceil(self.ocb);
        let kernel = self.kernel;
        let (b, r0) = (t / split.bands, (t % split.bands) * split.rows);
        let r1 = (r0 + split.rows).min(split.max_rows);
        with_prep(self.scratch_len(), |prep| {
            let lo = r0 * self.row_step;
            let hi = ((r1 - 1) * self.row_step + self.row_span).min(self.prep.rows);
            self.prep
                .fill_rows(&x[b * in_img..(b + 1) * in_img], prep, lo, hi);
            for p in &self.parts {
                let pr1 = r1.min(p.oh);
                if r0 >= pr1 {
                    continue;
                }
                let job = self.job(p, prep, 0, outp, out_len);
                for ob in 0..nob {
                    // SAFETY: `kernel` was chosen by `conv_tile` for the
                    // detected ISA; the packed weights were sized by this
                    // plan and `prep` holds every input row the rows
                    // `r0..pr1` read; tasks write disjoint (image, rows),
                    // and the phases of a transposed convolution write
                    // disjoint pixels.
                    unsafe { kernel(&job, b, ob, r0, pr1) }
                }
            }
        })
    }

    /// Runs one image on the calling thread only: `x` `[cin, h, w]`,
    /// `scratch` at least `scratch_len()`, `out` `out_len()` floats.
    pub fn run_image(&self, x: &[f32], scratch: &mut [f32], out: &mut [f32]) {
        assert_eq!(x.len(), self.cin * self.h * self.w, "input size");
        assert_eq!(out.len(), self.out_len(), "output size");
        let prep = &mut scratch[..self.scratch_len()];
        self.prep.fill_image(x, prep);
        let (outp, out_len) = (OutPtr(out.as_mut_ptr()), out.len());
        for p in &self.parts {
            let job = self.job(p, prep, 0, outp, out_len);
            for ob in 0..self.cout.div_ceil(self.ocb) {
                // SAFETY: as in `run`; one image, written by this thread only.
                unsafe { (self.kernel)(&job, 0, ob, 0, p.oh) }
            }
        }
    }

    /// The job of one part over prepared input `x` (`x_img` floats per
    /// image; 0 when `x` holds one image).
    fn job<'a>(
        &'a self,
        p: &'a Part,
        x: &'a [f32],
        x_img: usize,
        out: OutPtr,
        out_len: usize,
    ) -> ConvJob<'a> {
        ConvJob {
            x,
            x_img,
            x_ch: self.prep.ch_len(),
            x_row: p.x_row,
            taps: &p.taps,
            cin: self.cin,
            w: &p.w,
            bias: self.bias.as_deref(),
            relu: self.relu,
            cout: self.cout,
            oh: p.oh,
            ow: p.ow,
            out,
            out_len,
            out_off: p.out_off,
            out_img: self.out_len(),
            out_ch: self.oh * self.ow,
            out_row: p.out_row,
            out_col: p.out_col,
        }
    }
}

/// Weight gradient of the convolution `geom` (its kind must be
/// [`LayerConv::Conv`]) for the output gradient `g` `[batch, cout, oh, ow]`
/// and the input `x` `[batch, cin, h, w]` -> `[cout, cin, k, k]`. The
/// output size is the caller's (the adjoint use, a transposed
/// convolution's weight gradient, states one that is not the
/// convolution's own).
pub fn conv2d_weight_grad(
    isa: Isa,
    g: &[f32],
    x: &[f32],
    batch: usize,
    geom: &ConvGeom,
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    assert!(
        matches!(geom.conv, LayerConv::Conv { .. }),
        "a convolution's geometry"
    );
    assert_eq!(x.len(), batch * geom.in_len(), "input size");
    assert_eq!(g.len(), batch * geom.cout * oh * ow, "gradient size");
    let (cin, cout, k, stride) = (geom.cin, geom.cout, geom.k, geom.stride());
    let l = isa.lanes();
    let rows = ((oh.max(1) - 1) * stride + k).max(geom.h + geom.pad());
    let owp = round_up(ow, l);
    let cols = owp + (k - 1) / stride + 1;
    let prep = strided_prep(geom, rows, cols);
    let nt = k * k;
    if batch == 0 || oh == 0 || ow == 0 {
        return vec![0f32; cout * cin * nt];
    }
    let per_image = batch >= IMAGES_PER_THREAD * rayon::current_num_threads();
    let mut xp = Vec::new();
    if !per_image {
        xp = vec![0f32; batch * prep.img_len()];
        prep.fill(x, batch, &mut xp);
    }
    // Rows of g padded with zeros to whole vectors.
    let gp: std::borrow::Cow<[f32]> = if owp == ow {
        std::borrow::Cow::Borrowed(g)
    } else {
        let mut v = vec![0f32; batch * cout * oh * owp];
        v.par_chunks_mut(owp)
            .zip(g.par_chunks(ow))
            .for_each(|(d, s)| d[..ow].copy_from_slice(s));
        std::borrow::Cow::Owned(v)
    };
    let taps = strided_taps(k, stride, rows, cols);
    let job = WgradJob {
        g: &gp,
        g_img: cout * oh * owp,
        g_ch: oh * owp,
        g_row: owp,
        x: &xp,
        x_img: prep.img_len(),
        x_ch: prep.ch_len(),
        x_row: stride * cols,
        taps: &taps,
        cout,
        cin,
        oh,
        row_vecs: owp / l,
    };
    let kernel = wgrad_kernel(isa, nt);
    if per_image {
        wgrad_per_image(kernel, &job, &prep, x, batch)
    } else {
        wgrad_per_channel(kernel, &job, batch)
    }
}

// Each group of WGRAD_GROUP consecutive images is summed into a partial of
// its own (images in order), and the partials are added to the result in
// group order: the same additions in the same order whatever the thread
// count or the split between tasks, so training gives the same weights on
// 1 or 16 threads. Both ways below keep that per-element order.

/// The images of group `g` of a batch of `batch`.
fn wgrad_group(g: usize, batch: usize) -> std::ops::Range<usize> {
    g * WGRAD_GROUP..((g + 1) * WGRAD_GROUP).min(batch)
}

/// Weight gradient with one task per group of images: each image is
/// prepared once (from `x`, NCHW) for all channels.
fn wgrad_per_image(
    kernel: WgradFn,
    job: &WgradJob,
    prep: &Prep,
    x: &[f32],
    batch: usize,
) -> Vec<f32> {
    let n = job.cout * job.cin * job.taps.len();
    let in_img = prep.cin * prep.h * prep.w;
    let mut partials = vec![0f32; batch.div_ceil(WGRAD_GROUP) * n];
    partials.par_chunks_mut(n).enumerate().for_each(|(g, acc)| {
        with_prep(prep.img_len(), |buf| {
            for b in wgrad_group(g, batch) {
                prep.fill_image(&x[b * in_img..(b + 1) * in_img], buf);
                let job = WgradJob {
                    x: buf,
                    x_img: 0,
                    ..job.clone()
                };
                for ci in 0..job.cin {
                    // SAFETY: `kernel` matches the detected ISA; `buf`
                    // holds image `b` prepared for every tap.
                    unsafe { kernel(&job, b, ci, acc) };
                }
            }
        });
    });
    let mut out = vec![0f32; n];
    for p in partials.chunks(n) {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Weight gradient with one task per (group, input channel) over the
/// whole batch's prepared input `job.x`, each into a `[cout][taps]`
/// partial: the kernel sees a one-channel job whose input starts at
/// channel `ci`.
fn wgrad_per_channel(kernel: WgradFn, job: &WgradJob, batch: usize) -> Vec<f32> {
    let (cin, cout, nt) = (job.cin, job.cout, job.taps.len());
    let m = cout * nt;
    let mut partials = vec![0f32; batch.div_ceil(WGRAD_GROUP) * cin * m];
    partials
        .par_chunks_mut(m)
        .enumerate()
        .for_each(|(gc, acc)| {
            let (g, ci) = (gc / cin, gc % cin);
            let job = WgradJob {
                x: &job.x[ci * job.x_ch..],
                cin: 1,
                ..job.clone()
            };
            for b in wgrad_group(g, batch) {
                // SAFETY: `kernel` matches the detected ISA; `job.x` starts
                // at channel `ci` of the prepared input, so image `b`'s
                // channel 0 is `ci` and every tap of it is in bounds.
                unsafe { kernel(&job, b, 0, acc) };
            }
        });
    let mut out = vec![0f32; cout * cin * nt];
    for (gc, p) in partials.chunks(m).enumerate() {
        let ci = gc % cin;
        for o in 0..cout {
            let dst = &mut out[(o * cin + ci) * nt..(o * cin + ci + 1) * nt];
            for (d, v) in dst.iter_mut().zip(&p[o * nt..(o + 1) * nt]) {
                *d += v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::reference;
    use crate::rng::Rng;

    fn rand(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: element {i}: {x} vs reference {y}"
            );
        }
    }

    /// Runs `plan` on the batch `x` of `b` images into a NaN-filled buffer
    /// (a NaN left means an element not written) and compares with `want`;
    /// also runs it one image at a time on this thread and into a new
    /// vector, which must give exactly the batched result.
    fn check_plan(
        plan: &ConvPlan,
        x: &[f32],
        b: usize,
        (oh, ow): (usize, usize),
        want: &[f32],
        what: &str,
    ) {
        assert_eq!((plan.oh, plan.ow), (oh, ow));
        let mut out = vec![f32::NAN; b * plan.out_len()];
        plan.run(x, b, &mut out);
        let fresh = plan.run_new(x, b);
        assert_eq!(fresh.len(), out.len());
        assert!(
            fresh
                .iter()
                .zip(&out)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: run_new differs from run"
        );
        let mut scratch = vec![f32::NAN; plan.scratch_len()];
        let mut one = vec![f32::NAN; plan.out_len()];
        let n_in = x.len() / b;
        for bi in 0..b {
            plan.run_image(&x[bi * n_in..(bi + 1) * n_in], &mut scratch, &mut one);
            assert_eq!(&one[..], &out[bi * one.len()..(bi + 1) * one.len()]);
        }
        assert_close(&out, want, what);
    }

    fn bias_relu(v: &mut [f32], bias: Option<&[f32]>, relu: bool, plane: usize) {
        for (i, x) in v.iter_mut().enumerate() {
            if let Some(b) = bias {
                *x += b[(i / plane) % b.len()];
            }
            if relu {
                *x = x.max(0.0);
            }
        }
    }

    #[test]
    fn conv_matches_reference_on_random_shapes_for_every_isa() {
        let mut rng = Rng::new(31);
        for isa in Isa::available() {
            for case in 0..40 {
                let b = [1, 2, 5][rng.below(3)];
                let cin = [1, 3, 5, 16, 17][rng.below(5)];
                let cout = [1, 2, 3, 7, 9, 16, 20][rng.below(7)];
                let k = [1, 3, 5][rng.below(3)];
                let stride = 1 + rng.below(2);
                let pad = [0, k / 2][rng.below(2)];
                let h = k.max(1 + rng.below(21));
                let w = k.max(1 + rng.below(37));
                let x = rand(&mut rng, b * cin * h * w);
                let wt = rand(&mut rng, cout * cin * k * k);
                let bias = rand(&mut rng, cout);
                let (use_bias, relu) = (rng.bool(0.5), rng.bool(0.5));
                let bias = use_bias.then_some(&bias[..]);
                let g = conv_geom((cin, h, w), cout, k, (stride, pad));
                let plan = ConvPlan::new(isa, &g, &wt, bias, relu);
                let (mut want, oh, ow) = reference::conv(&x, b, &g, &wt);
                bias_relu(&mut want, bias, relu, oh * ow);
                let what = format!(
                    "{isa:?} case {case}: b{b} {cin}->{cout} {h}x{w} k{k} s{stride} p{pad}"
                );
                check_plan(&plan, &x, b, (oh, ow), &want, &what);
            }
        }
    }

    #[test]
    fn transposed_conv_matches_reference_on_random_shapes_for_every_isa() {
        let mut rng = Rng::new(32);
        for isa in Isa::available() {
            for case in 0..40 {
                let b = [1, 2, 5][rng.below(3)];
                let cin = [1, 4, 9, 16][rng.below(4)];
                let cout = [1, 2, 5, 8, 17][rng.below(5)];
                let k = 2 + rng.below(4);
                let stride = 1 + rng.below(3);
                let pad = rng.below(k.div_ceil(2));
                let (oph, opw) = (rng.below(stride), rng.below(stride));
                let h = 1 + rng.below(12);
                let w = 1 + rng.below(25);
                if (h - 1) * stride + k + oph <= 2 * pad || (w - 1) * stride + k + opw <= 2 * pad {
                    continue;
                }
                let x = rand(&mut rng, b * cin * h * w);
                let wt = rand(&mut rng, cin * cout * k * k);
                let bias = rand(&mut rng, cout);
                let (use_bias, relu) = (rng.bool(0.5), rng.bool(0.5));
                let bias = use_bias.then_some(&bias[..]);
                // The reference takes one output padding: compare on the
                // larger output and crop.
                let op = oph.max(opw);
                let g = ConvGeom {
                    cin,
                    h,
                    w,
                    cout,
                    k,
                    conv: LayerConv::Transpose {
                        stride,
                        pad,
                        out_pad: op,
                    },
                };
                let plan = ConvPlan::with_out_pad(isa, &g, (oph, opw), &wt, bias, relu);
                let (full, fh, fw) = reference::conv(&x, b, &g, &wt);
                let (oh, ow) = (fh - (op - oph), fw - (op - opw));
                let mut want = Vec::with_capacity(b * cout * oh * ow);
                for bo in 0..b * cout {
                    for y in 0..oh {
                        let row = (bo * fh + y) * fw;
                        want.extend_from_slice(&full[row..row + ow]);
                    }
                }
                bias_relu(&mut want, bias, relu, oh * ow);
                let what = format!(
                    "{isa:?} case {case}: b{b} {cin}->{cout} {h}x{w} k{k} s{stride} p{pad} op{oph},{opw}"
                );
                check_plan(&plan, &x, b, (oh, ow), &want, &what);
            }
        }
    }

    /// dW[o,i,ky,kx] = sum g[b,o,y,x] * x[b,i,y*s+ky-p,x*s+kx-p], by definition.
    fn naive_wgrad(
        g: &[f32],
        x: &[f32],
        b: usize,
        geom: &ConvGeom,
        (oh, ow): (usize, usize),
    ) -> Vec<f32> {
        let (ci, h, w, co, k) = (geom.cin, geom.h, geom.w, geom.cout, geom.k);
        let (s, p) = (geom.stride(), geom.pad());
        let mut out = vec![0f64; co * ci * k * k];
        for bi in 0..b {
            for o in 0..co {
                for i in 0..ci {
                    for ky in 0..k {
                        for kx in 0..k {
                            let mut acc = 0f64;
                            for y in 0..oh {
                                for xx in 0..ow {
                                    let iy = (y * s + ky) as isize - p as isize;
                                    let ix = (xx * s + kx) as isize - p as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    acc += g[((bi * co + o) * oh + y) * ow + xx] as f64
                                        * x[((bi * ci + i) * h + iy as usize) * w + ix as usize]
                                            as f64;
                                }
                            }
                            out[((o * ci + i) * k + ky) * k + kx] += acc;
                        }
                    }
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    fn conv_geom(
        shape: (usize, usize, usize),
        cout: usize,
        k: usize,
        (stride, pad): (usize, usize),
    ) -> ConvGeom {
        ConvGeom::new(shape, cout, k, LayerConv::Conv { stride, pad })
    }

    /// Training gives the same weights on any thread count: the weight
    /// gradient, the one reduction across images, has the same bits whether
    /// a batch runs one image per task or (for few images per thread) one
    /// input channel per task, on 1 to 5 threads, run after run.
    #[test]
    fn weight_grad_has_the_same_bits_on_any_thread_count() {
        let mut rng = Rng::new(34);
        let isa = Isa::detect();
        for &(b, ci, co, hw, k, s, p) in &[
            (5, 3, 17, 19, 3, 1, 1),
            (9, 16, 5, 12, 3, 2, 1),
            (32, 4, 8, 8, 5, 1, 2),
            (1, 2, 3, 7, 3, 1, 1),
        ] {
            let (oh, ow) = ((hw + 2 * p - k) / s + 1, (hw + 2 * p - k) / s + 1);
            let x = rand(&mut rng, b * ci * hw * hw);
            let g = rand(&mut rng, b * co * oh * ow);
            let geom = conv_geom((ci, hw, hw), co, k, (s, p));
            let run = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| conv2d_weight_grad(isa, &g, &x, b, &geom, (oh, ow)))
            };
            let want: Vec<u32> = run(1).iter().map(|v| v.to_bits()).collect();
            for threads in [1, 2, 3, 5, 2, 3] {
                let got: Vec<u32> = run(threads).iter().map(|v| v.to_bits()).collect();
                assert!(
                    got == want,
                    "b{b} {ci}->{co} {hw}x{hw} k{k} s{s}: {threads} threads differ from 1"
                );
            }
        }
    }

    #[test]
    fn weight_grad_matches_definition_for_every_isa() {
        let mut rng = Rng::new(33);
        for isa in Isa::available() {
            for case in 0..30 {
                let b = [1, 2, 5][rng.below(3)];
                let ci = [1, 3, 16][rng.below(3)];
                let co = [1, 2, 5, 16, 17][rng.below(5)];
                let k = [1, 2, 3, 5][rng.below(4)];
                let s = 1 + rng.below(2);
                let p = rng.below(k / 2 + 1);
                let h = k.max(1 + rng.below(19));
                let w = k.max(1 + rng.below(35));
                // Any output size the caller states, including the adjoint use
                // (transposed convolution) where it is not conv's own.
                let oh = (h + 2 * p - k) / s + 1 + rng.below(2);
                let ow = (w + 2 * p - k) / s + 1 + rng.below(2);
                let x = rand(&mut rng, b * ci * h * w);
                let g = rand(&mut rng, b * co * oh * ow);
                let geom = conv_geom((ci, h, w), co, k, (s, p));
                let got = conv2d_weight_grad(isa, &g, &x, b, &geom, (oh, ow));
                let want = naive_wgrad(&g, &x, b, &geom, (oh, ow));
                let what = format!("{isa:?} case {case}: b{b} {ci}->{co} {h}x{w} k{k} s{s} p{p}");
                for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-3 * (1.0 + y.abs()),
                        "{what}: element {i}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
