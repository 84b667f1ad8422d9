//! Our PTX modules (compiled by `build.rs` from `kernels/*.cu`) and the small
//! helpers every launch uses. Only built with the `cuda` feature.

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig};
use candle_core::cuda_backend::CudaDevice;
use candle_core::Result;

/// One PTX module: loaded once per device by candle's module cache, under a
/// name of its own.
pub(crate) struct Module {
    name: &'static str,
    ptx: &'static str,
}

/// `kernels/score.cu`: the fused score and its backward pass.
pub(crate) const SCORE: Module = Module {
    name: "gcm-inspect/score",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/score.ptx")),
};

/// `kernels/evidence.cu`: quantised CCM evidence.
pub(crate) const EVIDENCE: Module = Module {
    name: "gcm-inspect/evidence",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/evidence.ptx")),
};

/// `kernels/preprocess.cu`: camera frame to model input.
pub(crate) const PREPROCESS: Module = Module {
    name: "gcm-inspect/preprocess",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/preprocess.ptx")),
};

/// The kernel `function` of `module` on `dev` (JIT-compiled from PTX by the
/// driver on first use, then cached). Launch it on `dev.cuda_stream()`, the
/// stream candle orders all of the device's work on.
pub(crate) fn function(dev: &CudaDevice, module: &Module, function: &str) -> Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(function, module.name, module.ptx)?
        .into_cuda_function())
}

/// Largest grid along y (and the cap we put on x; kernels stride over the rest).
const GRID_Y_MAX: usize = 65_535;
const GRID_X_MAX: usize = (1 << 31) - 1;

/// A 1-D launch of `blocks` blocks of `threads`; fails if `blocks` exceeds the
/// hardware's limit (the kernel launched this way does not stride).
pub(crate) fn linear(blocks: usize, threads: u32) -> Result<LaunchConfig> {
    if blocks == 0 || blocks > GRID_X_MAX {
        candle_core::bail!("cannot launch {blocks} blocks")
    }
    Ok(LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A 2-D launch for a grid-striding kernel: x over `x_items` (one per thread),
/// y over `y_items` (one per block row), both capped.
pub(crate) fn strided_2d(x_items: usize, y_items: usize, threads: u32) -> LaunchConfig {
    let x = x_items.div_ceil(threads as usize).clamp(1, GRID_Y_MAX);
    let y = y_items.clamp(1, GRID_Y_MAX);
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}
