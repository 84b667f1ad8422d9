//! Our CUDA kernels executed without a GPU: the helpers of the emulation
//! tests, and the tests of the emulation itself.
//!
//! The crate `gcm-cuda-emu` (`kernels/emu/`, a dev-dependency: only tests
//! build it, with the host C++ compiler) compiles the unmodified
//! `kernels/*.cu` against an emulation of the CUDA C++ they use and runs a
//! launch's blocks on the CPU, each block's threads as cooperative fibers
//! switched at `__syncthreads` and warp shuffles (deterministic; its crate
//! docs give the model). Each op's emulation test (`emu_tests` next to the
//! op: [`crate::model::score`], [`crate::gpu::evidence`],
//! [`crate::preprocess::device`]) runs every kernel of the op with the
//! launch geometry of [`super::launch`], the one `cuda_fwd` uses, and holds
//! the result to the op's CPU reference on awkward shapes.
//!
//! What the emulation cannot see: timing and memory coalescing; real warp
//! scheduling (Volta's independent thread scheduling, races inside a block or
//! between blocks: threads switch only at barriers and shuffles, in a fixed
//! order); nvcc, PTX and the driver's JIT and their bugs, and resource limits;
//! nvcc's floating point (it contracts `a * b + c` into an FMA where the
//! emulation rounds twice; kernels that use the `_rn` intrinsics are exact
//! either way); out-of-bounds accesses (host pointers, no checks). The
//! `#[ignore]`d GPU parity tests (`tests/it/gpu.rs`) remain the check on a GPU.

use gcm_cuda_emu::{Arg, Unit};

use super::launch::Launch;

/// Runs kernel `name` of `unit` with the launch geometry `l`.
///
/// # Safety
///
/// The buffers in `args` must hold every element the kernel accesses with
/// these arguments, as for a real launch.
pub(crate) unsafe fn run(unit: Unit, name: &str, l: Launch, args: &mut [Arg]) {
    let (g, b) = (l.grid, l.block);
    // SAFETY: the caller's promise.
    unsafe { gcm_cuda_emu::launch(unit, name, [g.0, g.1, g.2], [b.0, b.1, b.2], args) }
        .unwrap_or_else(|e| panic!("emulated {name}: {e}"))
}

/// Indices where `got` and `want` differ by more than `tol(i)`, with the
/// first few as text (empty when they agree).
pub(crate) fn mismatches(got: &[f64], want: &[f64], tol: impl Fn(usize) -> f64) -> Vec<String> {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .enumerate()
        .filter(|&(i, (g, w))| {
            let close = (g - w).abs() <= tol(i);
            !close // NaN is never close
        })
        .map(|(i, (g, w))| format!("[{i}] {g} vs {w} (tolerance {:e})", tol(i)))
        .collect()
}

mod tests {
    use super::*;
    use gcm_cuda_emu::convert;
    use gcm_cuda_emu::half::{bf16, f16};

    fn self_test(name: &str, grid: u32, block: u32, args: &mut [Arg]) -> Result<(), String> {
        // SAFETY: the self-test kernels' buffers are sized by each test for
        // the grid it launches.
        unsafe { gcm_cuda_emu::launch(Unit::SelfTest, name, [grid, 1, 1], [block, 1, 1], args) }
    }

    #[test]
    fn shuffles_exchange_exactly_the_xor_lane() {
        let (grid, block) = (2u32, 64u32);
        let mut out = vec![0u32; 2 * (grid * block) as usize];
        self_test("emu_lanes", grid, block, &mut [Arg::slice_mut(&mut out)]).unwrap();
        for (t, pair) in out.chunks(2).enumerate() {
            let lane = t as u32 % 32;
            assert_eq!(pair[0], lane ^ 5, "thread {t}");
            assert_eq!(pair[1], (0..32).sum::<u32>(), "thread {t}");
        }
    }

    #[test]
    fn barriers_ignore_returned_threads_and_shared_memory_is_per_block() {
        let (grid, block, live) = (3u32, 96u32, 70u32);
        let mut out = vec![u32::MAX; (grid * live) as usize];
        let mut args = [Arg::slice_mut(&mut out), Arg::val(live)];
        self_test("emu_barrier", grid, block, &mut args).unwrap();
        for b in 0..grid {
            for t in 0..live {
                let want = 1000 * b + (t + 1) % live;
                assert_eq!(out[(b * live + t) as usize], want, "block {b} thread {t}");
            }
        }
    }

    #[test]
    fn a_shuffle_naming_a_missing_lane_fails_the_launch() {
        let mut out = vec![0u32; 32];
        let e = self_test("emu_bad_mask", 1, 32, &mut [Arg::slice_mut(&mut out)]).unwrap_err();
        let want = "emu_bad_mask, block (0, 0, 0): warp 0: lane 3 returned while lane 0";
        assert!(e.contains(want), "{e}");
        // A block smaller than a warp leaves lanes 16.. missing.
        let e = self_test("emu_lanes", 1, 16, &mut [Arg::slice_mut(&mut out)]).unwrap_err();
        assert!(e.contains("lane 16 does not exist"), "{e}");
    }

    #[test]
    fn launches_check_names_types_and_sizes() {
        let mut out = vec![0f32; 64];
        let e = self_test("emu_lanes", 1, 32, &mut [Arg::slice_mut(&mut out)]).unwrap_err();
        assert_eq!(e, "emu_lanes takes (pu), given (pf)");
        let e = self_test("emu_nothing", 1, 32, &mut []).unwrap_err();
        assert_eq!(e, "no kernel named emu_nothing");
        let mut out = vec![0u32; 64];
        let e = self_test("emu_lanes", 0, 32, &mut [Arg::slice_mut(&mut out)]).unwrap_err();
        assert!(e.contains("empty grid"), "{e}");
    }

    /// Every f16 and bf16 widens exactly; f32 values narrow to nearest-even
    /// as the `half` crate does (ties, subnormals, overflow, and every 97th
    /// bit pattern of both signs).
    #[test]
    fn half_conversions_round_to_nearest_even() {
        for h in 0..=u16::MAX {
            let (f, b) = (f16::from_bits(h), bf16::from_bits(h));
            let (ef, eb) = (convert::f16_to_f32(h), convert::bf16_to_f32(h));
            assert!(ef.to_bits() == f.to_f32().to_bits() || f.is_nan() && ef.is_nan());
            assert!(eb.to_bits() == b.to_f32().to_bits() || b.is_nan() && eb.is_nan());
        }
        let edges = [
            65504.0f32,
            65519.99,
            65520.0,
            1.0 + 2f32.powi(-11),
            2f32.powi(-25),
        ];
        let edges = edges
            .into_iter()
            .chain([3.0 * 2f32.powi(-25), 1e-8, f32::MAX, 0.0]);
        let sampled = (0..u32::MAX / 97).map(|i| f32::from_bits(i * 97));
        for v in edges.chain(sampled).flat_map(|v| [v, -v]) {
            let (h, b) = (convert::f32_to_f16(v), convert::f32_to_bf16(v));
            if v.is_nan() {
                assert!(f16::from_bits(h).is_nan() && bf16::from_bits(b).is_nan());
                continue;
            }
            assert_eq!(
                h,
                f16::from_f32(v).to_bits(),
                "f16 of {v:e} ({:#x})",
                v.to_bits()
            );
            assert_eq!(
                b,
                bf16::from_f32(v).to_bits(),
                "bf16 of {v:e} ({:#x})",
                v.to_bits()
            );
        }
    }
}
