//! The SIMD vocabulary the kernels are written in, and runtime CPU detection.
//!
//! Kernels are generic over [`Simd`] and `#[inline(always)]`; each instruction
//! set gets one `#[target_feature]` entry point per kernel (see
//! `kernels.rs`), chosen at run time from [`Isa::detect`]. The same source thus
//! compiles to AVX-512, AVX2+FMA, NEON and a portable fallback.

use std::sync::OnceLock;

/// An instruction set the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 with AVX-512F (16 f32 lanes, 32 vector registers).
    Avx512,
    /// x86-64 with AVX2 and FMA (8 lanes, 16 registers).
    Avx2,
    /// aarch64 Advanced SIMD (4 lanes, 32 registers, fused multiply-add).
    Neon,
    /// Plain Rust on 4-wide arrays (whatever the compiler vectorises).
    Portable,
}

impl Isa {
    /// The best instruction set of this CPU. `GCM_INSPECT_ISA=avx512|avx2|neon|portable`
    /// forces a lower one (for testing and measuring); an unsupported request
    /// falls back to detection.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let forced = std::env::var("GCM_INSPECT_ISA").ok();
            let available = Isa::available();
            if let Some(name) = forced {
                if let Some(isa) = available.iter().find(|i| i.name() == name.trim()) {
                    return *isa;
                }
            }
            available[0]
        })
    }

    /// Every instruction set this CPU can run, best first (always ends with
    /// [`Isa::Portable`]).
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                v.push(Isa::Neon);
            }
        }
        v.push(Isa::Portable);
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Portable => "portable",
        }
    }

    /// f32 lanes of one vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Neon | Isa::Portable => 4,
        }
    }
}

/// One vector type and the handful of operations the kernels use.
///
/// # Safety
/// Implementations may only be called from code compiled with (or running on
/// a CPU that has) the instruction set they use; pointers must be valid for
/// `LANES` floats.
pub unsafe trait Simd: Copy {
    const LANES: usize;
    type V: Copy;
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn splat(x: f32) -> Self::V;
    /// Unaligned load of `LANES` floats.
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Unaligned store of `LANES` floats.
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`.
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes.
    /// # Safety
    /// Only on a CPU with this instruction set; pointers valid for `LANES` floats.
    unsafe fn hsum(v: Self::V) -> f32;
}

/// Portable fallback: four lanes in an array.
#[derive(Clone, Copy)]
pub struct Portable;

// SAFETY: plain array code, valid on every CPU; pointers are the caller's duty.
unsafe impl Simd for Portable {
    const LANES: usize = 4;
    type V = [f32; 4];
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 4]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 4 readable floats at `p`.
        unsafe { std::ptr::read_unaligned(p as *const [f32; 4]) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees 4 writable floats at `p`.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 4], v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // Not `mul_add`: without hardware FMA that is a slow library call.
        [
            a[0] * b[0] + c[0],
            a[1] * b[1] + c[1],
            a[2] * b[2] + c[2],
            a[3] * b[3] + c[3],
        ]
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        [
            a[0].max(b[0]),
            a[1].max(b[1]),
            a[2].max(b[2]),
            a[3].max(b[3]),
        ]
    }
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        (v[0] + v[1]) + (v[2] + v[3])
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX-512F, 16 lanes.
    #[derive(Clone, Copy)]
    pub struct Avx512;

    // SAFETY: only instantiated inside `#[target_feature(enable = "avx512f,...")]`
    // functions that are called after `Isa::detect` found AVX-512F.
    unsafe impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            // SAFETY: AVX-512F is present (trait contract).
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self::V {
            // SAFETY: as above.
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            // SAFETY: as above; the caller guarantees 16 readable floats.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            // SAFETY: as above; the caller guarantees 16 writable floats.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn hsum(v: Self::V) -> f32 {
            // SAFETY: as above.
            unsafe { _mm512_reduce_add_ps(v) }
        }
    }

    /// AVX2 + FMA, 8 lanes.
    #[derive(Clone, Copy)]
    pub struct Avx2;

    // SAFETY: only instantiated inside `#[target_feature(enable = "avx2,fma")]`
    // functions that are called after `Isa::detect` found AVX2 and FMA.
    unsafe impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            // SAFETY: AVX is present (trait contract).
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self::V {
            // SAFETY: as above.
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            // SAFETY: as above; the caller guarantees 8 readable floats.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            // SAFETY: as above; the caller guarantees 8 writable floats.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            // SAFETY: FMA is present (trait contract).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn hsum(v: Self::V) -> f32 {
            // SAFETY: as above.
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Simd;
    use std::arch::aarch64::*;

    /// aarch64 Advanced SIMD, 4 lanes.
    #[derive(Clone, Copy)]
    pub struct Neon;

    // SAFETY: only instantiated inside `#[target_feature(enable = "neon")]`
    // functions that are called after `Isa::detect` found NEON.
    unsafe impl Simd for Neon {
        const LANES: usize = 4;
        type V = float32x4_t;
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            // SAFETY: NEON is present (trait contract).
            unsafe { vdupq_n_f32(0.0) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self::V {
            // SAFETY: as above.
            unsafe { vdupq_n_f32(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            // SAFETY: as above; the caller guarantees 4 readable floats.
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            // SAFETY: as above; the caller guarantees 4 writable floats.
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { vfmaq_f32(c, a, b) }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
            // SAFETY: as above.
            unsafe { vmaxq_f32(a, b) }
        }
        #[inline(always)]
        unsafe fn hsum(v: Self::V) -> f32 {
            // SAFETY: as above.
            unsafe { vaddvq_f32(v) }
        }
    }
}
