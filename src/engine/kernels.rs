//! The two inner kernels every convolution is built from, and their
//! per-instruction-set entry points.
//!
//! * [`ConvJob`]: a direct convolution on a *prepared* input (zero-padded,
//!   split into column phases for strided convolutions) in NCHW. A register
//!   tile holds `OCB` output channels x `NV` vectors of output pixels; for every
//!   input channel and kernel tap the tile loads `NV` input vectors, broadcasts
//!   `OCB` weights and does `OCB * NV` fused multiply-adds. The taps are a list
//!   of offsets, so the same kernel runs 3x3 and 5x5 convolutions of any stride
//!   and each phase of the sub-pixel transposed convolution. Bias and ReLU are
//!   applied in registers before the store.
//! * [`WgradJob`]: the weight gradient, `dW[o,i,t] = sum g[o,p] * x[i,p+t]`,
//!   with `OB` output channels x `TC` taps of accumulators kept in registers
//!   over a whole image.

#[cfg(target_arch = "aarch64")]
use super::simd::Neon;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
use super::simd::{Isa, Portable, Simd};

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: the pointer is only written through by tasks whose output elements
// are disjoint (see `ConvJob`), and the buffer outlives the parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// One direct convolution over a prepared input (see the module docs).
#[derive(Debug)]
pub(crate) struct ConvJob<'a> {
    /// Prepared input of all images.
    pub x: &'a [f32],
    /// Floats per image / per input channel in `x`.
    pub x_img: usize,
    pub x_ch: usize,
    /// Offset in `x` from one output row to the next (input row stride x stride).
    pub x_row: usize,
    /// Offset of each kernel tap inside one input channel.
    pub taps: &'a [usize],
    pub cin: usize,
    /// Packed weights `[cout / OCB][cin][taps][OCB]` (zero-padded channels).
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
    pub cout: usize,
    pub oh: usize,
    pub ow: usize,
    /// Output element `(b, o, y, x)` is at
    /// `out_off + b*out_img + o*out_ch + y*out_row + x*out_col`.
    pub out: OutPtr,
    pub out_len: usize,
    pub out_off: usize,
    pub out_img: usize,
    pub out_ch: usize,
    pub out_row: usize,
    pub out_col: usize,
}

/// One task of a [`ConvJob`]: image `b`, output-channel block `ob`, rows `r0..r1`.
pub(crate) type ConvFn = unsafe fn(&ConvJob, usize, usize, usize, usize);

#[inline(always)]
unsafe fn conv_task<S: Simd, const OCB: usize, const NV: usize>(
    job: &ConvJob,
    b: usize,
    ob: usize,
    r0: usize,
    r1: usize,
) {
    let l = S::LANES;
    let nt = job.taps.len();
    let cin = job.cin;
    let o0 = ob * OCB;
    let nvalid = OCB.min(job.cout - o0);
    debug_assert!(job.w.len() >= (ob + 1) * cin * nt * OCB);
    debug_assert!(job.x.len() >= (b + 1) * job.x_img);
    debug_assert!(r0 < r1 && r1 <= job.oh);
    debug_assert!(
        job.out_off
            + b * job.out_img
            + (job.cout - 1) * job.out_ch
            + (job.oh - 1) * job.out_row
            + (job.ow - 1) * job.out_col
            < job.out_len
    );
    // SAFETY (whole body): the caller built `job` with `x` sized for every
    // position and tap read here (prepared input padded to whole vectors),
    // `w` packed for `ob`, and `out` valid for every element stored; tasks
    // of one job own disjoint (b, ob, rows).
    unsafe {
        let xb = job.x.as_ptr().add(b * job.x_img);
        let wb = job.w.as_ptr().add(ob * cin * nt * OCB);
        let taps = job.taps.as_ptr();
        let mut bias = [0f32; OCB];
        if let Some(bs) = job.bias {
            bias[..nvalid].copy_from_slice(&bs[o0..o0 + nvalid]);
        }
        let vecs_per_row = job.ow.div_ceil(l);
        let total = (r1 - r0) * vecs_per_row;
        let outb = job
            .out
            .0
            .add(job.out_off + b * job.out_img + o0 * job.out_ch);
        let mut pos = 0;
        while pos < total {
            let mut xoff = [0usize; NV];
            let mut ooff = [0usize; NV];
            let mut ox = [0usize; NV];
            for v in 0..NV {
                // Past the end the last position is recomputed, not stored.
                let p = (pos + v).min(total - 1);
                let y = r0 + p / vecs_per_row;
                let x = (p % vecs_per_row) * l;
                xoff[v] = y * job.x_row + x;
                ooff[v] = y * job.out_row + x * job.out_col;
                ox[v] = x;
            }
            // Vectors side by side in one row (the common case) get constant
            // offsets, which fold into the loads' addressing.
            let acc = if ooff[NV - 1] == ooff[0] + (NV - 1) * l * job.out_col
                && xoff[NV - 1] == xoff[0] + (NV - 1) * l
            {
                let mut offs = [0usize; NV];
                for (v, o) in offs.iter_mut().enumerate() {
                    *o = v * S::LANES;
                }
                accumulate::<S, OCB, NV>(xb.add(xoff[0]), wb, taps, cin, nt, job.x_ch, offs)
            } else {
                accumulate::<S, OCB, NV>(xb, wb, taps, cin, nt, job.x_ch, xoff)
            };
            let here = NV.min(total - pos);
            let zero = S::zero();
            for (o, acc_o) in acc.iter().enumerate().take(nvalid) {
                let bv = S::splat(bias[o]);
                let och = outb.add(o * job.out_ch);
                for v in 0..here {
                    let mut r = S::add(acc_o[v], bv);
                    if job.relu {
                        r = S::max(r, zero);
                    }
                    let dst = och.add(ooff[v]);
                    if job.out_col == 1 && ox[v] + l <= job.ow {
                        S::store(dst, r);
                    } else {
                        let mut tmp = [0f32; 16];
                        S::store(tmp.as_mut_ptr(), r);
                        for (j, &val) in tmp.iter().enumerate().take(l.min(job.ow - ox[v])) {
                            *dst.add(j * job.out_col) = val;
                        }
                    }
                }
            }
            pos += NV;
        }
    }
}

/// The `OCB x NV` accumulators of one tile: input vectors at `xb + offs[v]`
/// plus each tap's offset, for every input channel.
#[inline(always)]
unsafe fn accumulate<S: Simd, const OCB: usize, const NV: usize>(
    xb: *const f32,
    wb: *const f32,
    taps: *const usize,
    cin: usize,
    nt: usize,
    x_ch: usize,
    offs: [usize; NV],
) -> [[S::V; NV]; OCB] {
    let mut acc = [[S::zero(); NV]; OCB];
    // SAFETY: the caller (`conv_task`) guarantees every address read is inside
    // the prepared input and the packed weights.
    unsafe {
        for ci in 0..cin {
            let xc = xb.add(ci * x_ch);
            let wc = wb.add(ci * nt * OCB);
            for t in 0..nt {
                let xt = xc.add(*taps.add(t));
                let mut xv = [S::zero(); NV];
                for v in 0..NV {
                    xv[v] = S::load(xt.add(offs[v]));
                }
                let wt = wc.add(t * OCB);
                for (o, acc_o) in acc.iter_mut().enumerate() {
                    let wv = S::splat(*wt.add(o));
                    for v in 0..NV {
                        acc_o[v] = S::fma(wv, xv[v], acc_o[v]);
                    }
                }
            }
        }
    }
    acc
}

/// The weight gradient of a convolution over a prepared input.
#[derive(Clone, Debug)]
pub(crate) struct WgradJob<'a> {
    /// Output gradient, rows padded with zeros to whole vectors.
    pub g: &'a [f32],
    pub g_img: usize,
    pub g_ch: usize,
    pub g_row: usize,
    /// Prepared input (as for the forward [`ConvJob`]).
    pub x: &'a [f32],
    pub x_img: usize,
    pub x_ch: usize,
    pub x_row: usize,
    pub taps: &'a [usize],
    pub cout: usize,
    pub cin: usize,
    pub oh: usize,
    /// Vectors per output row (`g_row / LANES`).
    pub row_vecs: usize,
}

/// One task of a [`WgradJob`]: image `b`, input channel `ci`, adding into
/// `out` (`[cout][cin][taps]`).
pub(crate) type WgradFn = unsafe fn(&WgradJob, usize, usize, &mut [f32]);

#[inline(always)]
unsafe fn wgrad_task<S: Simd, const OB: usize, const TC: usize>(
    job: &WgradJob,
    b: usize,
    ci: usize,
    out: &mut [f32],
) {
    let l = S::LANES;
    let nt = job.taps.len();
    debug_assert!(out.len() >= job.cout * job.cin * nt);
    // SAFETY (whole body): `g` holds `row_vecs` whole vectors per row for every
    // (b, o, y); `x` is prepared so that every tap of every such vector is in
    // bounds; indices into `out` are below cout*cin*nt.
    unsafe {
        let gb = job.g.as_ptr().add(b * job.g_img);
        let xb = job.x.as_ptr().add(b * job.x_img + ci * job.x_ch);
        let mut o0 = 0;
        while o0 < job.cout {
            let mut gp = [gb; OB];
            for (o, p) in gp.iter_mut().enumerate() {
                *p = gb.add((o0 + o).min(job.cout - 1) * job.g_ch);
            }
            let mut t0 = 0;
            while t0 < nt {
                let mut tp = [0usize; TC];
                for (t, p) in tp.iter_mut().enumerate() {
                    *p = job.taps[(t0 + t).min(nt - 1)];
                }
                let mut acc = [[S::zero(); TC]; OB];
                for y in 0..job.oh {
                    let xrow = xb.add(y * job.x_row);
                    let grow = y * job.g_row;
                    for xv in 0..job.row_vecs {
                        let mut gv = [S::zero(); OB];
                        for o in 0..OB {
                            gv[o] = S::load(gp[o].add(grow + xv * l));
                        }
                        let xp = xrow.add(xv * l);
                        for t in 0..TC {
                            let xx = S::load(xp.add(tp[t]));
                            for o in 0..OB {
                                acc[o][t] = S::fma(gv[o], xx, acc[o][t]);
                            }
                        }
                    }
                }
                for (o, acc_o) in acc.iter().enumerate() {
                    if o0 + o >= job.cout {
                        break;
                    }
                    let base = ((o0 + o) * job.cin + ci) * nt;
                    for (t, &a) in acc_o.iter().enumerate() {
                        if t0 + t >= nt {
                            break;
                        }
                        *out.get_unchecked_mut(base + t0 + t) += S::hsum(a);
                    }
                }
                t0 += TC;
            }
            o0 += OB;
        }
    }
}

macro_rules! entries {
    ($conv:ident, $wgrad:ident, $S:ty, [$($feat:literal)?]) => {
        $(#[target_feature(enable = $feat)])?
        unsafe fn $conv<const OCB: usize, const NV: usize>(
            job: &ConvJob,
            b: usize,
            ob: usize,
            r0: usize,
            r1: usize,
        ) {
            // SAFETY: dispatched only when `Isa::detect` found the features.
            unsafe { conv_task::<$S, OCB, NV>(job, b, ob, r0, r1) }
        }
        $(#[target_feature(enable = $feat)])?
        unsafe fn $wgrad<const OB: usize, const TC: usize>(
            job: &WgradJob,
            b: usize,
            ci: usize,
            out: &mut [f32],
        ) {
            // SAFETY: dispatched only when `Isa::detect` found the features.
            unsafe { wgrad_task::<$S, OB, TC>(job, b, ci, out) }
        }
    };
}

#[cfg(target_arch = "x86_64")]
entries!(conv_avx512, wgrad_avx512, Avx512, ["avx512f,avx2,fma"]);
#[cfg(target_arch = "x86_64")]
entries!(conv_avx2, wgrad_avx2, Avx2, ["avx2,fma"]);
#[cfg(target_arch = "aarch64")]
entries!(conv_neon, wgrad_neon, Neon, ["neon"]);
entries!(conv_portable, wgrad_portable, Portable, []);

/// The register tile for a convolution with `cout` output channels:
/// `(OCB, NV, kernel)`: `OCB` output channels by `NV` vectors of output
/// positions. Tiles were chosen to fill the register file
/// (32 registers for AVX-512 and NEON, 16 for AVX2) with accumulators,
/// leaving room for the `NV` input vectors and a broadcast weight. AVX2 is
/// tight: 4x3 (12 accumulators + 3 inputs + 1 weight = all 16) compiled to
/// register shuffles in the inner loop and 2x6 (19) spilled to the stack;
/// 6x2 (15) and 2x4 (13) do neither (figures: BENCHMARKS.md, "Changes
/// kept", AVX2 register tiles).
pub(crate) fn conv_tile(isa: Isa, cout: usize) -> (usize, usize, ConvFn) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match cout {
            0..=2 => (2, 8, conv_avx512::<2, 8>),
            3..=4 => (4, 4, conv_avx512::<4, 4>),
            _ => (8, 2, conv_avx512::<8, 2>),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match cout {
            0..=2 => (2, 4, conv_avx2::<2, 4>),
            _ => (6, 2, conv_avx2::<6, 2>),
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match cout {
            0..=2 => (2, 8, conv_neon::<2, 8>),
            3..=4 => (4, 6, conv_neon::<4, 6>),
            _ => (8, 3, conv_neon::<8, 3>),
        },
        _ => match cout {
            0..=2 => (2, 4, conv_portable::<2, 4>),
            _ => (4, 2, conv_portable::<4, 2>),
        },
    }
}

/// The weight-gradient kernel for `taps` kernel taps.
pub(crate) fn wgrad_kernel(isa: Isa, taps: usize) -> WgradFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match taps {
            9 => wgrad_avx512::<2, 9>,
            25 => wgrad_avx512::<1, 25>,
            _ => wgrad_avx512::<2, 8>,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match taps {
            9 => wgrad_avx2::<1, 9>,
            _ => wgrad_avx2::<2, 5>,
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match taps {
            9 => wgrad_neon::<2, 9>,
            25 => wgrad_neon::<1, 25>,
            _ => wgrad_neon::<2, 8>,
        },
        _ => wgrad_portable::<1, 8>,
    }
}
