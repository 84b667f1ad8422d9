//! Our own GPU ops besides the fused score (which lives with the model, in
//! [`crate::model::score`]) and frame preprocessing (the contract's device
//! backend, in [`crate::preprocess::device`]): CCM evidence.
//!
//! Each op is a candle custom op with two implementations: `cpu_fwd`, plain
//! Rust that is the reference, and, with the `cuda` feature, `cuda_fwd`, our
//! kernel in `kernels/*.cu`. The public functions take a [`Device`] (or work
//! on the device of their input tensors), so the same call runs the reference
//! on the CPU and the kernel on a GPU; the GPU parity tests
//! (`tests/it/gpu.rs`) compare the two on a GPU, and without one the
//! emulation tests (`gpu::emu`, every kernel run on the CPU with the launch
//! geometry of `gpu::launch`) do.
//!
//! - [`evidence`]: the CCM of chosen (frame, class) pairs, split into positive
//!   and negative parts and quantised to 16 bits exactly as the evidence
//!   format stores them ([`crate::evidence::QuantCcm`]), so only those values
//!   come back to the host; for check (a) only the sums of those values.
//!
//! [`Device`]: candle_core::Device

pub mod evidence;
#[cfg(any(feature = "cuda", test))]
pub(crate) mod launch;

#[cfg(test)]
pub(crate) mod emu;

#[cfg(feature = "cuda")]
pub(crate) mod ptx;

pub use evidence::{ccm_evidence, ccm_sums, Pick};
