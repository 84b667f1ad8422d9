//! `kernels/evidence.cu` run by the host emulation ([`crate::gpu::emu`])
//! with the launches `cuda_fwd` uses, against the ops' CPU reference
//! (`QuantCcm::new`). The kernels promise the reference bit for bit (the
//! maxima do not depend on the order, the quantisation is the host's f64
//! formula, the sums are of integers), so the comparison is exact.

use candle_core::{CustomOp2, Tensor};
use gcm_cuda_emu::{Arg, Unit};

use super::{per_pick_launch, quantise_launch, CcmQuant, CcmSums};
use crate::gpu::emu::run;
use crate::model::score::tests::rand;
use crate::rng::Rng;

/// `(B, N, D, R, C)`: 1x1, planes no multiple of the block (256), one
/// class, more than 8 classes.
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (2, 3, 3, 5, 7),
    (1, 1, 3, 40, 40),
    (3, 13, 1, 33, 37),
];

/// Three picks a frame (the first class, the last, and one more; repeats
/// allowed), flattened to `(frame, class)` words.
fn picks(b: usize, n: usize) -> Vec<u32> {
    (0..b)
        .flat_map(|f| [(f, 0), (f, n - 1), (f, (f + 1) % n)])
        .flat_map(|(f, j)| [f as u32, j as u32])
        .collect()
}

fn cpu(op: &impl CustomOp2, cwm: &Tensor, img: &Tensor) -> Vec<u32> {
    let t = cwm.apply_op2_no_bwd(img, op).unwrap();
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

/// The inputs of one case: random maps and image, or (`positive`) both
/// non-negative, so that the negative part is empty (scale 0).
fn inputs(
    rng: &mut Rng,
    (b, n, d, r, c): (usize, usize, usize, usize, usize),
    positive: bool,
) -> (Tensor, Tensor) {
    let (cwm, img) = (rand(rng, &[b, n, r, c]), rand(rng, &[b, d, r, c]));
    if positive {
        (cwm.abs().unwrap(), img.abs().unwrap())
    } else {
        (cwm, img)
    }
}

fn data(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn evidence_kernels_equal_the_reference() {
    let mut rng = Rng::new(21);
    for &shape in SHAPES {
        for positive in [false, true] {
            let (b, n, d, r, c) = shape;
            let hw = r * c;
            let (cwm, img) = inputs(&mut rng, shape, positive);
            let (cw, im) = (data(&cwm), data(&img));
            let picks = picks(b, n);
            let k = picks.len() / 2;
            let u = |v: usize| v as u64;

            let mut out = vec![u32::MAX; k * (2 + d * hw)];
            let mut args = [
                Arg::slice(&cw),
                Arg::slice(&im),
                Arg::slice(&picks),
                Arg::slice_mut(&mut out),
                Arg::val(u(n)),
                Arg::val(u(d)),
                Arg::val(u(hw)),
            ];
            // SAFETY: cwm is [B, N, hw], img [B, D, hw], every pick is inside
            // B and N, and out holds K rows of 2 + D * hw words.
            unsafe {
                run(
                    Unit::Kernels,
                    "gcm_ccm_max",
                    per_pick_launch(k).unwrap(),
                    &mut args,
                )
            };
            let mut args = [
                Arg::slice(&cw),
                Arg::slice(&im),
                Arg::slice(&picks),
                Arg::slice_mut(&mut out),
                Arg::val(u(k)),
                Arg::val(u(n)),
                Arg::val(u(d)),
                Arg::val(u(hw)),
            ];
            // SAFETY: as above.
            unsafe {
                run(
                    Unit::Kernels,
                    "gcm_ccm_quantise",
                    quantise_launch(hw, k),
                    &mut args,
                )
            };
            let op = CcmQuant {
                picks: picks.clone(),
            };
            assert_eq!(
                out,
                cpu(&op, &cwm, &img),
                "gcm_ccm_* {shape:?} positive={positive}"
            );

            let mut sums = vec![u32::MAX; k * 6];
            let mut args = [
                Arg::slice(&cw),
                Arg::slice(&im),
                Arg::slice(&picks),
                Arg::slice_mut(&mut sums),
                Arg::val(u(n)),
                Arg::val(u(d)),
                Arg::val(u(hw)),
            ];
            // SAFETY: as above; sums holds K rows of 6 words.
            unsafe {
                run(
                    Unit::Kernels,
                    "gcm_ccm_qsum",
                    per_pick_launch(k).unwrap(),
                    &mut args,
                )
            };
            let op = CcmSums { picks };
            assert_eq!(
                sums,
                cpu(&op, &cwm, &img),
                "gcm_ccm_qsum {shape:?} positive={positive}"
            );
        }
    }
}
