//! The launch geometry of our kernels: how many blocks of how many threads
//! each launch uses, computed by plain functions (compiled with or without
//! the `cuda` feature), so that the CUDA launches and the host emulation's
//! tests (`crate::gpu::emu`) run the kernels with the same configuration.
//! Built with the `cuda` feature and for tests.

use candle_core::Result;

/// Largest grid along y (and the cap we put on x; kernels stride over the rest).
const GRID_Y_MAX: usize = 65_535;
const GRID_X_MAX: usize = (1 << 31) - 1;

/// A grid of `grid` blocks of `block` threads (x, y, z), no dynamic shared
/// memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// A 1-D launch of `blocks` blocks of `threads`; fails if `blocks` exceeds the
/// hardware's limit (the kernel launched this way does not stride).
pub(crate) fn linear(blocks: usize, threads: u32) -> Result<Launch> {
    if blocks == 0 || blocks > GRID_X_MAX {
        candle_core::bail!("cannot launch {blocks} blocks")
    }
    Ok(Launch {
        grid: (blocks as u32, 1, 1),
        block: (threads, 1, 1),
    })
}

/// A 2-D launch for a grid-striding kernel: x over `x_items` (one per thread),
/// y over `y_items` (one per block row), both capped.
pub(crate) fn strided_2d(x_items: usize, y_items: usize, threads: u32) -> Launch {
    let x = x_items.div_ceil(threads as usize).clamp(1, GRID_Y_MAX);
    let y = y_items.clamp(1, GRID_Y_MAX);
    Launch {
        grid: (x as u32, y as u32, 1),
        block: (threads, 1, 1),
    }
}

#[cfg(feature = "cuda")]
impl From<Launch> for candle_core::cuda_backend::cudarc::driver::LaunchConfig {
    fn from(l: Launch) -> Self {
        Self {
            grid_dim: l.grid,
            block_dim: l.block,
            shared_mem_bytes: 0,
        }
    }
}
