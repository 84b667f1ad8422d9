//! Our PTX modules (compiled by `build.rs` from `kernels/*.cu`) and the small
//! helper that loads a kernel (the launch geometry is in
//! [`super::launch`]). Only built with the `cuda` feature.

use candle_core::cuda_backend::cudarc::driver::CudaFunction;
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
