//! `kernels/score.cu` run by the host emulation ([`crate::gpu::emu`]) with
//! the launches `cuda_fwd` uses, against the op's CPU reference.
//!
//! The reference is the CPU op in f64 on the same values (each value is
//! first rounded to the kernel's dtype, so both see the same inputs). The
//! kernels sum in another order (per thread, then butterfly over a warp,
//! then over warps and tiles) and in f32 for f32, f16 and bf16, so a result
//! may differ by the accumulation's rounding, bounded by `SUM_EPS` times
//! the same op on the absolute values (the sum of the magnitudes of the
//! terms), plus the rounding of the output to its dtype (`OUT_EPS` times the
//! value, and `OUT_ABS` for f16's subnormals).

use candle_core::{Device, Layout, Tensor};
use gcm_cuda_emu::half::{bf16, f16};
use gcm_cuda_emu::{Arg, Elem, Unit};

use super::geometry::{grad_launch, score_launch};
use super::{gcm_score, plane_strides, Grad, ScoreDims, ScoreGrad};
use crate::gpu::emu::{mismatches, run};
use crate::rng::Rng;

/// A float dtype of the kernels: its storage type, accumulator and name.
trait Dtype: Elem {
    type Acc: Elem;
    const SUFFIX: &'static str;
    /// Relative rounding of one output value (half an ulp).
    const OUT_EPS: f64;
    /// Absolute rounding of a tiny output: half the spacing of the
    /// subnormals (2^-25 for f16, whose subnormals start below 6.1e-5).
    const OUT_ABS: f64;
    /// Accumulated rounding of the sums, relative to the sum of magnitudes.
    const SUM_EPS: f64;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn acc(v: f64) -> Self::Acc;
}

macro_rules! dtype {
    ($t:ty, $acc:ty, $suffix:literal, $out:expr, $abs:expr, $sum:expr, $from:expr, $to:expr) => {
        impl Dtype for $t {
            type Acc = $acc;
            const SUFFIX: &'static str = $suffix;
            const OUT_EPS: f64 = $out;
            const OUT_ABS: f64 = $abs;
            const SUM_EPS: f64 = $sum;
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn acc(v: f64) -> $acc {
                v as $acc
            }
        }
    };
}
// f32 sums of at most a few thousand terms, mostly pairwise: 1e-5 is a
// generous bound of their error relative to the magnitudes (2^-24 each).
dtype!(f32, f32, "f32", 6e-8, 0.0, 1e-5, |v| v as f32, |v: f32| v
    as f64);
dtype!(f64, f64, "f64", 1.2e-16, 0.0, 1e-13, |v| v, |v| v);
dtype!(
    f16,
    f32,
    "f16",
    4.9e-4,
    3e-8,
    1e-5,
    f16::from_f64,
    f16::to_f64
);
dtype!(
    bf16,
    f32,
    "bf16",
    3.9e-3,
    0.0,
    1e-5,
    bf16::from_f64,
    bf16::to_f64
);

/// `(B, N, D, R, C)`: 1x1, one class, planes of less, exactly and more
/// than one tile (1024) that are no multiple of the block (256), more than
/// 8 classes (the kernel's class group) and not a multiple of 8, and many
/// classes (five groups, the last one partial).
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (2, 3, 3, 5, 7),
    (1, 1, 3, 40, 40),
    (3, 13, 1, 33, 37),
    (1, 9, 3, 32, 32),
    (2, 17, 3, 45, 46),
    (2, 37, 2, 19, 23),
];

/// A CPU f64 tensor of uniform values in [-1, 1), each exactly a `T`.
fn values<T: Dtype>(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| T::from_f64(rng.range(-1.0, 1.0)).to_f64())
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The storage of `t` (contiguous or a view) as a `T` buffer from the
/// layout's start: what `cuda_fwd` passes to the kernel.
fn buffer<T: Dtype>(t: &Tensor) -> Vec<T> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        unreachable!("CPU tensors")
    };
    let all = s.as_slice::<f64>().unwrap();
    all[layout.start_offset()..]
        .iter()
        .map(|&v| T::from_f64(v))
        .collect()
}

fn tensor_values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// The forward kernels of `unit` on `cwm` `[B, N, R, C]` and `img`
/// `[B, D, R, C]` (strided views allowed, as on a GPU), as `cuda_fwd`
/// launches them; the scores in f64.
fn emulated_score<T: Dtype>(unit: Unit, cwm: &Tensor, img: &Tensor) -> Vec<f64> {
    let (b, n, r, c) = cwm.dims4().unwrap();
    let d = img.dim(1).unwrap();
    let dims = ScoreDims { b, n, d, hw: r * c };
    let launches = score_launch(dims).unwrap();
    let (sc, si) = (strides(cwm.layout()), strides(img.layout()));
    let (cwm_buf, img_buf) = (buffer::<T>(cwm), buffer::<T>(img));
    let mut partial = vec![T::acc(f64::NAN); b * n * launches.n_chunks];
    let u = |v: usize| v as u64;
    let mut args = [
        Arg::slice(&cwm_buf),
        Arg::slice(&img_buf),
        Arg::slice_mut(&mut partial),
        Arg::val(u(n)),
        Arg::val(u(d)),
        Arg::val(u(r * c)),
        Arg::val(u(sc.0)),
        Arg::val(u(sc.1)),
        Arg::val(u(si.0)),
        Arg::val(u(si.1)),
        Arg::val(u(launches.n_chunks)),
    ];
    let name = format!("gcm_score_partial_{}", T::SUFFIX);
    // SAFETY: the buffers run from the layouts' start offsets to the end of
    // their storage, which holds every element the strides reach; partial
    // holds B * N * n_chunks values, the kernel's output.
    unsafe { run(unit, &name, launches.partial, &mut args) };
    let mut out = vec![T::from_f64(f64::NAN); b * n];
    let inv = T::acc(1.0 / (r * c * d) as f64);
    let mut args = [
        Arg::slice(&partial),
        Arg::slice_mut(&mut out),
        Arg::val(u(b * n)),
        Arg::val(u(launches.n_chunks)),
        Arg::val(inv),
    ];
    let name = format!("gcm_score_finish_{}", T::SUFFIX);
    // SAFETY: partial holds n_chunks values for each of the B * N scores.
    unsafe { run(unit, &name, launches.finish, &mut args) };
    out.into_iter().map(T::to_f64).collect()
}

fn strides(l: &Layout) -> (usize, usize) {
    let s = plane_strides(l).expect("plane-contiguous views");
    (s.batch, s.plane)
}

/// CWM and image views that are not contiguous: batch items 1..1+B of B+1
/// (a start offset), class range 2..2+N of N+3 maps and channels 1..1+D of
/// D+1 (batch and class/channel strides that are not the contiguous ones),
/// as a batch narrowed out of a larger one, a CWM's class range and a padded
/// image are.
fn strided_inputs<T: Dtype>(
    rng: &mut Rng,
    shape: (usize, usize, usize, usize, usize),
) -> (Tensor, Tensor) {
    let (b, n, d, r, c) = shape;
    let view = |t: Tensor, extra: usize, len: usize| {
        t.narrow(0, 1, b).unwrap().narrow(1, extra, len).unwrap()
    };
    let cwm = view(values::<T>(rng, &[b + 1, n + 3, r, c]), 2, n);
    let img = view(values::<T>(rng, &[b + 1, d + 1, r, c]), 1, d);
    assert!(cwm.layout().start_offset() > 0 && img.layout().start_offset() > 0);
    (cwm, img)
}

/// Holds `got` to `want` = the CPU op `reference` on the inputs, within the
/// dtype's tolerance (see the module docs); the error names the case and
/// the first values that differ.
fn agrees<T: Dtype>(
    what: &str,
    got: &[f64],
    inputs: (&Tensor, &Tensor),
    reference: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Result<(), String> {
    let want = tensor_values(&reference(inputs.0, inputs.1));
    let mag = tensor_values(&reference(
        &inputs.0.abs().unwrap(),
        &inputs.1.abs().unwrap(),
    ));
    let tol = |i: usize| T::OUT_EPS * want[i].abs() + T::OUT_ABS + T::SUM_EPS * mag[i];
    let bad = mismatches(got, &want, tol);
    if bad.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what} {}: {} of {} differ: {:?}",
        T::SUFFIX,
        bad.len(),
        got.len(),
        &bad[..bad.len().min(5)]
    ))
}

/// The forward kernels of `unit` against `gcm_score` on every shape: the
/// failures, one per shape that fails (empty when all agree).
fn score_failures<T: Dtype>(unit: Unit) -> Vec<String> {
    let mut rng = Rng::new(11);
    let mut failures = Vec::new();
    for &shape in SHAPES {
        let (cwm, img) = strided_inputs::<T>(&mut rng, shape);
        let got = emulated_score::<T>(unit, &cwm, &img);
        let reference = |a: &Tensor, b: &Tensor| gcm_score(a, b).unwrap();
        let what = format!("score {shape:?}");
        if let Err(e) = agrees::<T>(&what, &got, (&cwm, &img), reference) {
            failures.push(e);
        }
    }
    failures
}

fn score_matches_the_reference<T: Dtype>() {
    let failures = score_failures::<T>(Unit::Kernels);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The backward kernels on contiguous inputs against `ScoreGrad`'s CPU
/// reference.
fn gradients_match_the_reference<T: Dtype>() {
    let mut rng = Rng::new(12);
    for &(b, n, d, r, c) in SHAPES {
        let hw = r * c;
        let g = values::<T>(&mut rng, &[b, n]);
        for which in [Grad::Cwm, Grad::Image { channels: d }] {
            let x = match which {
                Grad::Cwm => values::<T>(&mut rng, &[b, d, r, c]),
                Grad::Image { .. } => values::<T>(&mut rng, &[b, n, r, c]),
            };
            let (name, len, launch) = grad_launch(which, (b, n, d, hw));
            let (xb, gb) = (buffer::<T>(&x), buffer::<T>(&g));
            let mut out = vec![T::from_f64(f64::NAN); len];
            let u = |v: usize| v as u64;
            let mut args = [
                Arg::slice(&xb),
                Arg::slice(&gb),
                Arg::slice_mut(&mut out),
                Arg::val(u(b)),
                Arg::val(u(n)),
                Arg::val(u(d)),
                Arg::val(u(hw)),
                Arg::val(T::acc(1.0 / (hw * d) as f64)),
            ];
            // SAFETY: x is [B, D or N, hw], g [B, N] and out `len` values,
            // as the kernel reads and writes them.
            unsafe {
                run(
                    Unit::Kernels,
                    &format!("{name}_{}", T::SUFFIX),
                    launch,
                    &mut args,
                )
            };
            let got: Vec<f64> = out.into_iter().map(T::to_f64).collect();
            let reference =
                |x: &Tensor, g: &Tensor| x.apply_op2_no_bwd(g, &ScoreGrad(which)).unwrap();
            let what = format!("{name} {:?}", (b, n, d, r, c));
            agrees::<T>(&what, &got, (&x, &g), reference).unwrap();
        }
    }
}

#[test]
fn score_kernels_match_the_reference_in_every_dtype() {
    score_matches_the_reference::<f32>();
    score_matches_the_reference::<f64>();
    score_matches_the_reference::<f16>();
    score_matches_the_reference::<bf16>();
}

#[test]
fn gradient_kernels_match_the_reference_in_every_dtype() {
    gradients_match_the_reference::<f32>();
    gradients_match_the_reference::<f64>();
    gradients_match_the_reference::<f16>();
    gradients_match_the_reference::<bf16>();
}

/// The mutation check: `score.cu` with an off-by-one in the bound of the
/// channel loop, and with one in the index into the plane (`build.rs` of
/// `gcm-cuda-emu` compiles both mutants), each fails the very comparison the
/// tests above make, on every shape and in every dtype.
#[test]
fn off_by_ones_in_the_score_kernel_are_caught() {
    for unit in [Unit::MutantChannelBound, Unit::MutantTileIndex] {
        assert!(
            gcm_cuda_emu::mutation_applied(unit),
            "{unit:?}: the mutation no longer applies to score.cu"
        );
        let caught = [
            score_failures::<f32>(unit).len(),
            score_failures::<f64>(unit).len(),
            score_failures::<f16>(unit).len(),
            score_failures::<bf16>(unit).len(),
        ];
        assert_eq!(
            caught,
            [SHAPES.len(); 4],
            "{unit:?}: shapes on which the mutant fails, f32/f64/f16/bf16"
        );
    }
}

/// The mutants fail for the reason planted: their scores are exactly those
/// of the image without its last channel (scaled by (D-1)/D: the mutant
/// still divides by D), and of the maps without their element 0 (each tile
/// of 1024 reads the next one's first element instead of its own; a 33x37
/// plane has two tiles).
#[test]
fn the_mutants_compute_what_their_mutation_says() {
    let mut rng = Rng::new(13);
    let (b, n, d, r, c) = (2, 11, 3, 33, 37);
    let (cwm, img) = strided_inputs::<f64>(&mut rng, (b, n, d, r, c));
    let mag = tensor_values(&gcm_score(&cwm.abs().unwrap(), &img.abs().unwrap()).unwrap());
    let check = |unit: Unit, explained: Tensor| {
        let got = emulated_score::<f64>(unit, &cwm, &img);
        let explained = tensor_values(&explained);
        let tol = |i: usize| f64::OUT_EPS * explained[i].abs() + f64::SUM_EPS * mag[i];
        let bad = mismatches(&got, &explained, tol);
        assert!(bad.is_empty(), "{unit:?} differs otherwise: {bad:?}");
    };
    let without_last = gcm_score(&cwm, &img.narrow(1, 0, d - 1).unwrap()).unwrap();
    check(
        Unit::MutantChannelBound,
        (without_last * ((d - 1) as f64 / d as f64)).unwrap(),
    );
    let mask: Vec<f64> = (0..r * c).map(|p| if p == 0 { 0.0 } else { 1.0 }).collect();
    let mask = Tensor::from_vec(mask, (1, 1, r, c), &Device::Cpu).unwrap();
    let masked = cwm.broadcast_mul(&mask).unwrap();
    check(Unit::MutantTileIndex, gcm_score(&masked, &img).unwrap());
}
