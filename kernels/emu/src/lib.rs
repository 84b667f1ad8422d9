//! Runs gcm-inspect's CUDA kernels (`kernels/*.cu`) on the CPU, for tests
//! on machines without a GPU.
//!
//! `build.rs` compiles the unmodified kernel sources with the host C++
//! compiler against a small emulation of the CUDA C++ they use
//! (`include/cuda_emu.h`, and stand-ins for `cuda_fp16.h`/`cuda_bf16.h`):
//! `threadIdx`, `blockIdx`, `blockDim`, `gridDim`; `__shared__` memory per
//! block; `__syncthreads`; `__shfl_xor_sync` with its lane semantics;
//! `__half`/`__nv_bfloat16` with round-to-nearest-even conversions; the
//! rounding intrinsics (`__fadd_rn` & co.) and `__float_as_uint`.
//!
//! # Execution model
//!
//! [`launch`] runs the grid's blocks one after the other on the calling OS
//! thread (x fastest, then y, then z). The threads of a block are
//! cooperative fibers (`ucontext`) run in thread-index order, each until it
//! returns or reaches `__syncthreads` or a warp intrinsic:
//! - `__syncthreads` releases when every thread of the block that has not
//!   returned waits at it (threads that returned do not hold it up);
//! - `__shfl_xor_sync(mask, v, m)` completes when every lane of the warp
//!   named in `mask` has reached it with the same mask and lane mask, and
//!   gives each lane the value of lane `lane ^ m`. A named lane that has
//!   returned, waits at a barrier, or does not exist fails the launch with
//!   a message (on a GPU that is undefined behaviour), as does a deadlock.
//!
//! So a run is deterministic, and `__shared__` (a `static thread_local` in
//! the emulation) belongs to the one block the OS thread runs; it is not
//! cleared between blocks, where a GPU leaves it undefined. Floating point is
//! the host's IEEE arithmetic, compiled without FMA contraction.
//!
//! # What it cannot see
//!
//! - Timing and performance: nothing here says how fast a kernel is, or
//!   whether its memory accesses coalesce or its shared memory has bank
//!   conflicts.
//! - Real scheduling: threads switch only at barriers and shuffles, in a
//!   fixed order, so races between threads of a block that a GPU's warp
//!   scheduling (or independent thread scheduling since Volta) would expose,
//!   and races between blocks, do not show; neither do missing
//!   `__syncwarp`s or memory-fence bugs.
//! - The real compiler: nvcc's code generation, PTX, the driver's JIT and
//!   their bugs; resource limits (registers, shared memory size, launch
//!   bounds) are not checked.
//! - nvcc's floating point: nvcc contracts `a * b + c` into FMAs by default
//!   (the emulation rounds twice), and its math functions may differ in the
//!   last bit; kernels that use the `_rn` intrinsics are exact either way.
//! - Memory safety: the kernels run on host pointers without bounds checks,
//!   so an out-of-bounds access is not reported (it may corrupt the test
//!   process); the callers' buffers must be large enough, as on a GPU.

use std::ffi::{c_char, c_int, c_void, CString};
use std::marker::PhantomData;

/// A set of compiled kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// `kernels/score.cu`, `evidence.cu` and `preprocess.cu` as they are.
    Kernels = 0,
    /// The emulation's own test kernels (`selftest.cu`).
    SelfTest = 1,
    /// `score.cu` with a mutation of the mutation check: the bound of
    /// `score_partial`'s channel loop is off by one, so the channel sum S
    /// leaves out the last channel (see [`mutation_applied`]).
    MutantChannelBound = 2,
    /// `score.cu` with the other mutation: `score_partial`'s index into the
    /// plane is off by one (each thread reads the element after its own,
    /// each tile of 1024 the next one's first element instead of its own),
    /// so element 0 of every plane is left out.
    MutantTileIndex = 3,
}

/// Whether `build.rs` found the line it mutates in `score.cu` for mutant
/// `unit` (false for the other units); if not, the mutant is the
/// unmodified kernel and the mutation check fails.
pub fn mutation_applied(unit: Unit) -> bool {
    let applied = match unit {
        Unit::MutantChannelBound => env!("GCM_EMU_MUTANT_2"),
        Unit::MutantTileIndex => env!("GCM_EMU_MUTANT_3"),
        Unit::Kernels | Unit::SelfTest => "false",
    };
    applied == "true"
}

/// An element type of kernel buffers and arguments, with its code (the
/// emulation checks each launch's argument codes against the kernel's
/// parameter types).
pub trait Elem: Copy {
    const CODE: &'static str;
}

macro_rules! elem {
    ($($t:ty => $c:literal),*) => {
        $(impl Elem for $t { const CODE: &'static str = $c; })*
    };
}
elem!(f32 => "f", f64 => "d", half::f16 => "h", half::bf16 => "b", i32 => "i",
      u32 => "u", u64 => "U", u8 => "B");

/// One kernel argument: a value, or a buffer (a slice the kernel reads or
/// writes through a pointer).
pub struct Arg<'a> {
    code: String,
    value: Value,
    _borrow: PhantomData<&'a mut ()>,
}

enum Value {
    /// The value's bytes, in 8 aligned bytes.
    Scalar(u64),
    Pointer(*mut c_void),
}

impl<'a> Arg<'a> {
    /// A value argument.
    pub fn val<T: Elem>(v: T) -> Arg<'static> {
        let mut bits = 0u64;
        assert!(std::mem::size_of::<T>() <= 8);
        // SAFETY: T is one of the plain number types of `Elem` (no padding,
        // at most 8 bytes); its bytes are copied into the start of `bits`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&v as *const T).cast::<u8>(),
                (&mut bits as *mut u64).cast::<u8>(),
                std::mem::size_of::<T>(),
            )
        };
        Arg {
            code: T::CODE.into(),
            value: Value::Scalar(bits),
            _borrow: PhantomData,
        }
    }

    /// A buffer the kernel only reads.
    pub fn slice<T: Elem>(s: &'a [T]) -> Self {
        Arg {
            code: format!("p{}", T::CODE),
            value: Value::Pointer(s.as_ptr() as *mut c_void),
            _borrow: PhantomData,
        }
    }

    /// A buffer the kernel writes.
    pub fn slice_mut<T: Elem>(s: &'a mut [T]) -> Self {
        Arg {
            code: format!("p{}", T::CODE),
            value: Value::Pointer(s.as_mut_ptr().cast()),
            _borrow: PhantomData,
        }
    }
}

extern "C" {
    fn gcm_emu_launch(
        unit: c_int,
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        signature: *const c_char,
        args: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Runs kernel `name` of `unit` on `grid` blocks of `block` threads with
/// `args`; errors name a missing kernel, arguments of the wrong types, an
/// empty grid, or a failure inside the kernel (see the module docs).
///
/// # Safety
///
/// As with a real launch, the buffers must be large enough for every access
/// the kernel makes with these arguments: nothing checks the bounds.
pub unsafe fn launch(
    unit: Unit,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    args: &mut [Arg],
) -> Result<(), String> {
    let signature: Vec<&str> = args.iter().map(|a| a.code.as_str()).collect();
    let signature = CString::new(signature.join(",")).expect("codes have no NUL");
    let cname = CString::new(name).map_err(|_| format!("kernel name {name:?}"))?;
    let mut ptrs: Vec<*mut c_void> = args
        .iter_mut()
        .map(|a| match &mut a.value {
            Value::Scalar(bits) => (bits as *mut u64).cast(),
            Value::Pointer(p) => (p as *mut *mut c_void).cast(),
        })
        .collect();
    let mut err = vec![0u8; 1024];
    // SAFETY: every pointer points at a live value of the type its code
    // names, which the emulation checked against the kernel's parameters;
    // the buffers' sizes are the caller's promise (see above).
    let rc = unsafe {
        gcm_emu_launch(
            unit as c_int,
            cname.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            signature.as_ptr(),
            ptrs.as_mut_ptr(),
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    Err(String::from_utf8_lossy(&err[..end]).into_owned())
}

/// The `half` crate, whose `f16`/`bf16` are the buffers of `__half` and
/// `__nv_bfloat16` kernel parameters.
pub use half;

/// The emulation's `__half`/`__nv_bfloat16` conversions (the stand-in
/// headers'), so that tests can hold them to the `half` crate.
pub mod convert {
    extern "C" {
        fn gcm_emu_f32_to_f16(f: f32) -> u16;
        fn gcm_emu_f16_to_f32(h: u16) -> f32;
        fn gcm_emu_f32_to_bf16(f: f32) -> u16;
        fn gcm_emu_bf16_to_f32(h: u16) -> f32;
    }

    /// `__float2half_rn`, as bits.
    pub fn f32_to_f16(f: f32) -> u16 {
        // SAFETY: a plain function of a number.
        unsafe { gcm_emu_f32_to_f16(f) }
    }

    /// `__half2float` of the bits.
    pub fn f16_to_f32(h: u16) -> f32 {
        // SAFETY: a plain function of a number.
        unsafe { gcm_emu_f16_to_f32(h) }
    }

    /// `__float2bfloat16_rn`, as bits.
    pub fn f32_to_bf16(f: f32) -> u16 {
        // SAFETY: a plain function of a number.
        unsafe { gcm_emu_f32_to_bf16(f) }
    }

    /// `__bfloat162float` of the bits.
    pub fn bf16_to_f32(h: u16) -> f32 {
        // SAFETY: a plain function of a number.
        unsafe { gcm_emu_bf16_to_f32(h) }
    }
}
