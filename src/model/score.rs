//! The GCM scoring op: "tile, multiply, average" as one fused operation.
//!
//! `score[b, j] = 1/(R*C*D) * sum_{r,c,d} CWM[b, j, r, c] * I[b, d, r, c]`
//! `            = 1/(R*C*D) * sum_{r,c}   CWM[b, j, r, c] * S[b, r, c]`, `S = sum_d I`.
//!
//! The fused form reads each class map once and the channel-summed image once;
//! it never materialises the tiled weights or the CCM. The CPU implementation
//! here is the reference that every other implementation (the CUDA kernel, the
//! daemon's evidence check) is compared against.
//!
//! With the `cuda` feature, tensors on a GPU run our own kernels
//! (`kernels/score.cu`): the forward pass for f32, f64, f16 and bf16 (f16 and
//! bf16 accumulate in f32), for any B, N, R, C and for inputs whose batch,
//! class or channel strides are not the contiguous ones (each [R, C] plane must
//! be contiguous; other inputs are made so first); and a fused backward pass
//! (two elementwise kernels), so training on the GPU uses the same op.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Class scores `[B, N]` from class weight maps `[B, N, R, C]` and the (scaled)
/// image `[B, D, R, C]`. Differentiable with respect to both inputs.
pub fn gcm_score(cwm: &Tensor, image: &Tensor) -> Result<Tensor> {
    check_shapes(cwm, image)?;
    let (cwm, image) = if cwm.device().is_cuda() {
        // The kernel takes strided batches as they are.
        (planes_contiguous(cwm)?, planes_contiguous(image)?)
    } else {
        (cwm.contiguous()?, image.contiguous()?)
    };
    cwm.apply_op2(&image, GcmScore)
}

/// `t` itself when its [R, C] planes are contiguous, else a contiguous copy.
fn planes_contiguous(t: &Tensor) -> Result<Tensor> {
    if plane_strides(t.layout()).is_some() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Batch and plane strides (in elements) of a `[B, X, R, C]` layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlaneStrides {
    /// From one batch item to the next.
    pub batch: usize,
    /// From one class map (or image channel) to the next.
    pub plane: usize,
}

/// The strides of `l` if every `[R, C]` plane of it is contiguous, else `None`.
pub(crate) fn plane_strides(l: &Layout) -> Option<PlaneStrides> {
    let (dims, st) = (l.dims(), l.stride());
    if dims.len() != 4 {
        return None;
    }
    let (r, c) = (dims[2], dims[3]);
    if (c > 1 && st[3] != 1) || (r > 1 && st[2] != c) {
        return None;
    }
    Some(PlaneStrides {
        batch: st[0],
        plane: st[1],
    })
}

/// Class contribution maps `[B, N, D, R, C]`: `CCM_j = tile(CWM_j) x image`.
/// Only needed for evidence that is written out; scoring never builds it.
pub fn ccm(cwm: &Tensor, image: &Tensor) -> Result<Tensor> {
    check_shapes(cwm, image)?;
    cwm.unsqueeze(2)?.broadcast_mul(&image.unsqueeze(1)?)
}

fn check_shapes(cwm: &Tensor, image: &Tensor) -> Result<()> {
    let (b, _, r, c) = cwm.dims4()?;
    let (bi, _, ri, ci) = image.dims4()?;
    if (b, r, c) != (bi, ri, ci) {
        candle_core::bail!(
            "gcm_score: CWM {:?} and image {:?} disagree on batch or size",
            cwm.dims(),
            image.dims()
        )
    }
    if cwm.dtype() != image.dtype() {
        candle_core::bail!(
            "gcm_score: CWM is {:?}, image is {:?}",
            cwm.dtype(),
            image.dtype()
        )
    }
    Ok(())
}

/// The fused scoring op (see the module docs).
pub(crate) struct GcmScore;

/// Dimensions of one scoring problem.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScoreDims {
    pub b: usize,
    pub n: usize,
    pub d: usize,
    /// `R * C`.
    pub hw: usize,
}

impl ScoreDims {
    fn of(l1: &Layout, l2: &Layout) -> Result<Self> {
        let (b, n, r, c) = l1.shape().dims4()?;
        let (_, d, _, _) = l2.shape().dims4()?;
        Ok(ScoreDims { b, n, d, hw: r * c })
    }
}

/// Reference CPU kernel on contiguous slices: `out[b*n]`.
pub(crate) fn score_cpu<T>(cwm: &[T], img: &[T], dims: ScoreDims) -> Vec<T>
where
    T: num_like::Float,
{
    let ScoreDims { b, n, d, hw } = dims;
    let inv = T::from_f64(1.0 / (hw * d) as f64);
    let per_batch = |bi: usize| -> Vec<T> {
        // Channel sum once.
        let img_b = &img[bi * d * hw..(bi + 1) * d * hw];
        let mut s = img_b[..hw].to_vec();
        for ch in 1..d {
            for (acc, &v) in s.iter_mut().zip(&img_b[ch * hw..(ch + 1) * hw]) {
                *acc = *acc + v;
            }
        }
        // One dot per class, accumulated in f64 for a stable reference.
        (0..n)
            .map(|j| {
                let m = &cwm[(bi * n + j) * hw..(bi * n + j + 1) * hw];
                let dot: f64 = m
                    .iter()
                    .zip(&s)
                    .map(|(&w, &x)| w.to_f64() * x.to_f64())
                    .sum();
                T::from_f64(dot) * inv
            })
            .collect()
    };
    if b * n * hw >= 1 << 16 {
        (0..b).into_par_iter().flat_map_iter(per_batch).collect()
    } else {
        (0..b).flat_map(per_batch).collect()
    }
}

fn contiguous_slice<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("gcm_score: input is not contiguous"),
    }
}

// The method signatures are candle's `CustomOp2`, the same for every op.
impl CustomOp2 for GcmScore {
    fn name(&self) -> &'static str {
        "gcm-score"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = ScoreDims::of(l1, l2)?;
        let out = cpu_pair("gcm_score", (s1, l1), (s2, l2), &dims)?;
        Ok((out, Shape::from((dims.b, dims.n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::score_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        cwm: &Tensor,
        image: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, n, r, c) = cwm.dims4()?;
        let d = image.dim(1)?;
        if cwm.device().is_cuda() {
            // Two fused kernels instead of the chain of tensor ops below.
            let g = grad.contiguous()?;
            let grad_cwm = image
                .contiguous()?
                .apply_op2_no_bwd(&g, &ScoreGrad(Grad::Cwm))?;
            let grad_img = cwm
                .contiguous()?
                .apply_op2_no_bwd(&g, &ScoreGrad(Grad::Image { channels: d }))?;
            return Ok((Some(grad_cwm), Some(grad_img)));
        }
        let inv = 1.0 / (r * c * d) as f64;
        let g = (grad.reshape((b, n, 1, 1))? * inv)?;
        // d score_j / d CWM_j(r,c) = S(r,c) / (RCD)
        let s = image.sum_keepdim(1)?;
        let grad_cwm = g.broadcast_mul(&s)?;
        // d score_j / d I(d,r,c) = CWM_j(r,c) / (RCD), summed over classes, tiled over D
        let grad_img = cwm
            .broadcast_mul(&g)?
            .sum_keepdim(1)?
            .broadcast_as((b, d, r, c))?
            .contiguous()?;
        Ok((Some(grad_cwm), Some(grad_img)))
    }
}

/// One gradient of the scores (see [`Grad`]). The backward pass uses it on
/// the GPU; `cpu_fwd` is its reference (the CPU backward pass itself keeps
/// the tensor ops).
pub(crate) struct ScoreGrad(pub Grad);

/// Which gradient a [`ScoreGrad`] computes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grad {
    /// With respect to the CWM: `image` `[B, D, R, C]` and the incoming
    /// gradient `g` `[B, N]` give `g[b, j] * S[b] / (R*C*D)`, `[B, N, R, C]`.
    Cwm,
    /// With respect to the image: `cwm` `[B, N, R, C]` and `g` `[B, N]` give
    /// `sum_j g[b, j] * CWM[b, j] / (R*C*D)` on every one of the `channels`
    /// channels, `[B, D, R, C]`.
    Image { channels: usize },
}

/// The sizes of one gradient problem and the shape of its result.
#[derive(Clone, Copy, Debug)]
struct GradSizes {
    b: usize,
    n: usize,
    d: usize,
    hw: usize,
}

impl ScoreGrad {
    /// The problem's sizes from the layouts of the first input (`[B, X, R,
    /// C]`) and of the gradient (`[B, N]`), and the shape of the result.
    fn sizes(&self, l: &Layout, lg: &Layout) -> Result<(GradSizes, Shape)> {
        let (b, x, r, c) = l.shape().dims4()?;
        let (bg, n) = lg.shape().dims2()?;
        if bg != b {
            candle_core::bail!("gcm_score backward: batch {b} vs gradient batch {bg}")
        }
        let hw = r * c;
        Ok(match self.0 {
            Grad::Cwm => (GradSizes { b, n, d: x, hw }, Shape::from((b, n, r, c))),
            Grad::Image { channels: d } => {
                if x != n {
                    candle_core::bail!("gcm_score backward: {x} class maps vs {n} gradients")
                }
                (GradSizes { b, n, d, hw }, Shape::from((b, d, r, c)))
            }
        })
    }
}

/// A CPU kernel written once for both float dtypes.
trait PairKernel {
    fn run<T: num_like::Float>(&self, a: &[T], b: &[T]) -> Vec<T>;
}

/// Runs `kernel` on two contiguous CPU storages of one float dtype (`f32`
/// or `f64`); `op` names the operation in the error for any other.
fn cpu_pair(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    kernel: &impl PairKernel,
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            CpuStorage::F32(kernel.run(contiguous_slice(a, l1)?, contiguous_slice(b, l2)?))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            CpuStorage::F64(kernel.run(contiguous_slice(a, l1)?, contiguous_slice(b, l2)?))
        }
        _ => candle_core::bail!(
            "{op} on CPU supports f32 and f64, got {:?} and {:?}",
            s1.dtype(),
            s2.dtype()
        ),
    })
}

impl PairKernel for ScoreDims {
    fn run<T: num_like::Float>(&self, cwm: &[T], img: &[T]) -> Vec<T> {
        score_cpu(cwm, img, *self)
    }
}

/// The CPU reference of one gradient.
struct GradCpu(Grad, GradSizes);

impl PairKernel for GradCpu {
    fn run<T: num_like::Float>(&self, x: &[T], g: &[T]) -> Vec<T> {
        match self.0 {
            Grad::Cwm => grad_cwm_cpu(x, g, self.1),
            Grad::Image { .. } => grad_img_cpu(x, g, self.1),
        }
    }
}

fn grad_cwm_cpu<T: num_like::Float>(img: &[T], g: &[T], sizes: GradSizes) -> Vec<T> {
    let GradSizes { b, n, d, hw } = sizes;
    let inv = 1.0 / (hw * d) as f64;
    let mut out = Vec::with_capacity(b * n * hw);
    for bi in 0..b {
        let im = &img[bi * d * hw..(bi + 1) * d * hw];
        let s: Vec<f64> = (0..hw)
            .map(|p| (0..d).map(|ch| im[ch * hw + p].to_f64()).sum())
            .collect();
        for j in 0..n {
            let gj = g[bi * n + j].to_f64() * inv;
            out.extend(s.iter().map(|&v| T::from_f64(gj * v)));
        }
    }
    out
}

fn grad_img_cpu<T: num_like::Float>(cwm: &[T], g: &[T], sizes: GradSizes) -> Vec<T> {
    let GradSizes { b, n, d, hw } = sizes;
    let inv = 1.0 / (hw * d) as f64;
    let mut out = Vec::with_capacity(b * d * hw);
    for bi in 0..b {
        let plane: Vec<T> = (0..hw)
            .map(|p| {
                let t: f64 = (0..n)
                    .map(|j| g[bi * n + j].to_f64() * cwm[(bi * n + j) * hw + p].to_f64())
                    .sum();
                T::from_f64(t * inv)
            })
            .collect();
        for _ in 0..d {
            out.extend_from_slice(&plane);
        }
    }
    out
}

// The method signatures are candle's `CustomOp2`, the same for every op.
impl CustomOp2 for ScoreGrad {
    fn name(&self) -> &'static str {
        match self.0 {
            Grad::Cwm => "gcm-score-grad-cwm",
            Grad::Image { .. } => "gcm-score-grad-image",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (sizes, shape) = self.sizes(l1, l2)?;
        let kernel = GradCpu(self.0, sizes);
        let out = cpu_pair("gcm_score backward", (s1, l1), (s2, l2), &kernel)?;
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (GradSizes { b, n, d, hw }, shape) = self.sizes(l1, l2)?;
        cuda::score_grad(self.0, s1, l1, s2, l2, (b, n, d, hw)).map(|s| (s, shape))
    }
}

/// The launch geometry of `kernels/score.cu`, for the CUDA launches and
/// the emulation tests.
#[cfg(any(feature = "cuda", test))]
pub(crate) mod geometry {
    use candle_core::Result;

    use super::{Grad, ScoreDims};
    use crate::gpu::launch::{self, Launch};

    /// Threads per block and plane elements per block of the partial kernel
    /// (`SCORE_THREADS` and `SCORE_THREADS * SCORE_K` in `kernels/score.cu`).
    const SCORE_THREADS: u32 = 256;
    const SCORE_TILE: usize = 256 * 4;

    /// The two launches of the forward pass, for `B * N > 0` scores.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct ScoreLaunch {
        /// `gcm_score_partial_*`: one block per (batch item, tile of the plane).
        pub partial: Launch,
        /// `gcm_score_finish_*`: one warp per score, 8 a block.
        pub finish: Launch,
        /// Tiles of `SCORE_TILE` plane elements (at least one).
        pub n_chunks: usize,
    }

    pub(crate) fn score_launch(dims: ScoreDims) -> Result<ScoreLaunch> {
        let ScoreDims { b, n, hw, .. } = dims;
        let n_chunks = hw.div_ceil(SCORE_TILE).max(1);
        Ok(ScoreLaunch {
            partial: launch::linear(b * n_chunks, SCORE_THREADS)?,
            finish: launch::linear((b * n).div_ceil(8), 256)?,
            n_chunks,
        })
    }

    /// The kernel (without its dtype suffix), the output length and the launch
    /// of gradient `which` for sizes `(b, n, d, hw)`: grid-striding, x over the
    /// plane, y over the output's planes (`B * N`) or batch items.
    pub(crate) fn grad_launch(
        which: Grad,
        (b, n, d, hw): (usize, usize, usize, usize),
    ) -> (&'static str, usize, Launch) {
        let (name, len, rows) = match which {
            Grad::Cwm => ("gcm_score_grad_cwm", b * n * hw, b * n),
            Grad::Image { .. } => ("gcm_score_grad_img", b * d * hw, b),
        };
        (name, len, launch::strided_2d(hw, rows, 256))
    }
}

/// The launches of `kernels/score.cu`.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};
    use half::{bf16, f16};

    use super::geometry::{grad_launch, score_launch};
    use super::{plane_strides, Grad, PlaneStrides, ScoreDims};
    use crate::gpu::ptx;

    pub(super) fn score_fwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dims = ScoreDims::of(l1, l2)?;
        let (Some(sc), Some(si)) = (plane_strides(l1), plane_strides(l2)) else {
            candle_core::bail!("gcm_score: each [R, C] plane must be contiguous")
        };
        let dev = &s1.device;
        let inv = 1.0 / (dims.hw * dims.d) as f64;
        let args = Args {
            dev,
            l1,
            l2,
            dims,
            sc,
            si,
        };
        let out = CudaStorage {
            slice: dispatch("gcm_score", s1, s2, inv, &args)?,
            device: dev.clone(),
        };
        Ok((out, Shape::from((dims.b, dims.n))))
    }

    /// A launch written once for every float dtype: `T` the data type, `A`
    /// the accumulator (f32, or f64 for f64 data), `suffix` the kernel
    /// name's dtype suffix.
    trait Launch {
        fn launch<T: DeviceRepr, A: DeviceRepr>(
            &self,
            a: &CudaSlice<T>,
            b: &CudaSlice<T>,
            suffix: &str,
            inv: A,
        ) -> Result<CudaSlice<T>>;
    }

    /// Runs `run` on two storages of one dtype (f32, f64, f16 or bf16);
    /// `op` names the operation in the error for any other.
    fn dispatch(
        op: &str,
        s1: &CudaStorage,
        s2: &CudaStorage,
        inv: f64,
        run: &impl Launch,
    ) -> Result<CudaStorageSlice> {
        Ok(match (&s1.slice, &s2.slice) {
            (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b)) => {
                CudaStorageSlice::F32(run.launch(a, b, "f32", inv as f32)?)
            }
            (CudaStorageSlice::F64(a), CudaStorageSlice::F64(b)) => {
                CudaStorageSlice::F64(run.launch(a, b, "f64", inv)?)
            }
            (CudaStorageSlice::F16(a), CudaStorageSlice::F16(b)) => {
                CudaStorageSlice::F16(run.launch::<f16, f32>(a, b, "f16", inv as f32)?)
            }
            (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b)) => {
                CudaStorageSlice::BF16(run.launch::<bf16, f32>(a, b, "bf16", inv as f32)?)
            }
            _ => candle_core::bail!(
                "{op} on CUDA supports f32, f64, f16 and bf16, got {:?}",
                s1.dtype()
            ),
        })
    }

    struct Args<'a> {
        dev: &'a CudaDevice,
        l1: &'a Layout,
        l2: &'a Layout,
        dims: ScoreDims,
        sc: PlaneStrides,
        si: PlaneStrides,
    }

    impl Launch for Args<'_> {
        /// Partial sums per (score, tile), then one warp per score adds them.
        fn launch<T: DeviceRepr, A: DeviceRepr>(
            &self,
            cwm: &CudaSlice<T>,
            img: &CudaSlice<T>,
            suffix: &str,
            inv: A,
        ) -> Result<CudaSlice<T>> {
            let ScoreDims { b, n, d, hw } = self.dims;
            let dev = self.dev;
            // SAFETY: allocation only; every element is written by the finishing
            // kernel below (one warp per score) before anyone reads it.
            let mut out = unsafe { dev.alloc::<T>(b * n)? };
            if b * n == 0 {
                return Ok(out);
            }
            let launches = score_launch(self.dims)?;
            let n_chunks = launches.n_chunks;
            // SAFETY: allocation only; block (b, chunk) of the partial kernel
            // writes partial[(b * n + j) * n_chunks + chunk] for every j < n,
            // and the grid has one block per (b, chunk): all of it is written.
            let mut partial = unsafe { dev.alloc::<A>(b * n * n_chunks)? };
            let cwm = cwm.slice(self.l1.start_offset()..);
            let img = img.slice(self.l2.start_offset()..);
            let stream = dev.cuda_stream();
            {
                let f = ptx::function(dev, &ptx::SCORE, &format!("gcm_score_partial_{suffix}"))?;
                let u = |v: usize| v as u64;
                let (nn, dd, hh, nc) = (u(n), u(d), u(hw), u(n_chunks));
                let (csb, csn) = (u(self.sc.batch), u(self.sc.plane));
                let (isb, isd) = (u(self.si.batch), u(self.si.plane));
                let mut lb = stream.launch_builder(&f);
                lb.arg(&cwm).arg(&img).arg(&mut partial);
                lb.arg(&nn).arg(&dd).arg(&hh).arg(&csb).arg(&csn);
                lb.arg(&isb).arg(&isd).arg(&nc);
                let cfg = launches.partial.into();
                // SAFETY: the arguments match gcm_score_partial_* in
                // kernels/score.cu (T*, T*, A*, then eight u64). With the
                // strides of the layouts and their start offsets, every read
                // stays inside the two input buffers (the layouts were checked
                // by candle against their storage); writes stay inside
                // `partial`, sized above.
                unsafe { lb.launch(cfg) }.w()?;
            }
            {
                let f = ptx::function(dev, &ptx::SCORE, &format!("gcm_score_finish_{suffix}"))?;
                let (scores, nc) = ((b * n) as u64, n_chunks as u64);
                let mut lb = stream.launch_builder(&f);
                lb.arg(&partial)
                    .arg(&mut out)
                    .arg(&scores)
                    .arg(&nc)
                    .arg(&inv);
                let cfg = launches.finish.into();
                // SAFETY: matches gcm_score_finish_* (A*, T*, u64, u64, A);
                // warp i < scores reads partial[i * n_chunks ..][..n_chunks]
                // and writes out[i], both inside their allocations.
                unsafe { lb.launch(cfg) }.w()?;
            }
            Ok(out)
        }
    }

    /// The fused backward kernels; `(b, n, d, hw)` are the problem's sizes.
    pub(super) fn score_grad(
        which: Grad,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        (b, n, d, hw): (usize, usize, usize, usize),
    ) -> Result<CudaStorage> {
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("gcm_score backward: inputs must be contiguous")
        }
        let dev = &s1.device;
        let inv = 1.0 / (hw * d) as f64;
        let run = Backward {
            dev,
            which,
            o1: l1.start_offset(),
            o2: l2.start_offset(),
            sizes: (b, n, d, hw),
        };
        Ok(CudaStorage {
            slice: dispatch("gcm_score backward", s1, s2, inv, &run)?,
            device: dev.clone(),
        })
    }

    struct Backward<'a> {
        dev: &'a CudaDevice,
        which: Grad,
        o1: usize,
        o2: usize,
        sizes: (usize, usize, usize, usize),
    }

    impl Launch for Backward<'_> {
        fn launch<T: DeviceRepr, A: DeviceRepr>(
            &self,
            x: &CudaSlice<T>,
            g: &CudaSlice<T>,
            suffix: &str,
            inv: A,
        ) -> Result<CudaSlice<T>> {
            let (b, n, d, hw) = self.sizes;
            let (name, len, cfg) = grad_launch(self.which, self.sizes);
            // SAFETY: allocation only; the kernel writes every element: each
            // (plane row, position) pair of the output is visited by the grid-
            // striding loops over rows and positions.
            let mut out = unsafe { self.dev.alloc::<T>(len)? };
            if len == 0 {
                return Ok(out);
            }
            let f = ptx::function(self.dev, &ptx::SCORE, &format!("{name}_{suffix}"))?;
            let stream = self.dev.cuda_stream();
            let (x, g) = (x.slice(self.o1..), g.slice(self.o2..));
            let (bb, nn, dd, hh) = (b as u64, n as u64, d as u64, hw as u64);
            let mut lb = stream.launch_builder(&f);
            lb.arg(&x).arg(&g).arg(&mut out);
            lb.arg(&bb).arg(&nn).arg(&dd).arg(&hh).arg(&inv);
            // SAFETY: matches gcm_score_grad_{cwm,img}_* (T*, T*, T*, four u64,
            // A). The inputs are contiguous from their offsets with the sizes
            // given (image or CWM [B, D or N, hw], g [B, N]), so every read
            // and write is in bounds.
            unsafe { lb.launch(cfg.into()) }.w()?;
            Ok(out)
        }
    }
}

/// The minimal float interface the reference kernels need.
pub(crate) mod num_like {
    pub trait Float:
        Copy + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
    {
        fn from_f64(v: f64) -> Self;
        fn to_f64(self) -> f64;
    }
    impl Float for f32 {
        fn from_f64(v: f64) -> Self {
            v as f32
        }
        fn to_f64(self) -> f64 {
            self as f64
        }
    }
    impl Float for f64 {
        fn from_f64(v: f64) -> Self {
            v
        }
        fn to_f64(self) -> f64 {
            self
        }
    }
}

#[cfg(test)]
mod emu_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{DType, Device};

    /// A CPU `f32` tensor of uniform values in [-1, 1).
    pub(crate) fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn naive(
        cwm: &[f32],
        img: &[f32],
        b: usize,
        n: usize,
        d: usize,
        r: usize,
        c: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0; b * n];
        for bi in 0..b {
            for j in 0..n {
                let mut acc = 0.0f64;
                for di in 0..d {
                    for y in 0..r {
                        for x in 0..c {
                            let w = cwm[((bi * n + j) * r + y) * c + x] as f64;
                            let v = img[((bi * d + di) * r + y) * c + x] as f64;
                            acc += w * v;
                        }
                    }
                }
                out[bi * n + j] = acc / (r * c * d) as f64;
            }
        }
        out
    }

    #[test]
    fn score_equals_mean_of_ccm_and_naive_loop() {
        let mut rng = Rng::new(11);
        for case in 0..40 {
            let b = 1 + rng.below(3);
            let n = 1 + rng.below(16);
            let d = if case % 2 == 0 { 1 } else { 3 };
            let r = 1 + rng.below(13);
            let c = 1 + rng.below(13);
            let cwm = rand(&mut rng, &[b, n, r, c]);
            let img = rand(&mut rng, &[b, d, r, c]);
            let s = gcm_score(&cwm, &img).unwrap().to_vec2::<f32>().unwrap();
            // mean(CCM_j)
            let m = ccm(&cwm, &img)
                .unwrap()
                .flatten_from(2)
                .unwrap()
                .mean(2)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let nv = naive(
                &cwm.flatten_all().unwrap().to_vec1().unwrap(),
                &img.flatten_all().unwrap().to_vec1().unwrap(),
                b,
                n,
                d,
                r,
                c,
            );
            for bi in 0..b {
                for j in 0..n {
                    let (x, y, z) = (s[bi][j], m[bi][j], nv[bi * n + j]);
                    assert!((x - y).abs() < 1e-5, "case {case}: {x} vs mean(CCM) {y}");
                    assert!((x as f64 - z).abs() < 1e-5, "case {case}: {x} vs naive {z}");
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Rng::new(5);
        let (b, n, d, r, c) = (2, 3, 3, 4, 5);
        let cwm0 = rand(&mut rng, &[b, n, r, c]).to_dtype(DType::F64).unwrap();
        let img0 = rand(&mut rng, &[b, d, r, c]).to_dtype(DType::F64).unwrap();
        let wts = rand(&mut rng, &[b, n]).to_dtype(DType::F64).unwrap();
        let loss = |cwm: &Tensor, img: &Tensor| -> Tensor {
            (gcm_score(cwm, img).unwrap() * &wts)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let cv = candle_core::Var::from_tensor(&cwm0).unwrap();
        let iv = candle_core::Var::from_tensor(&img0).unwrap();
        let grads = loss(cv.as_tensor(), iv.as_tensor()).backward().unwrap();
        for (var, other, is_cwm) in [(&cv, &img0, true), (&iv, &cwm0, false)] {
            let g = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for k in (0..base.len()).step_by(7) {
                let eps = 1e-6;
                let mut p = base.clone();
                p[k] += eps;
                let pt = Tensor::from_vec(p, var.shape(), &Device::Cpu).unwrap();
                let mut m = base.clone();
                m[k] -= eps;
                let mt = Tensor::from_vec(m, var.shape(), &Device::Cpu).unwrap();
                let (lp, lm) = if is_cwm {
                    (loss(&pt, other), loss(&mt, other))
                } else {
                    (loss(other, &pt), loss(other, &mt))
                };
                let fd =
                    (lp.to_scalar::<f64>().unwrap() - lm.to_scalar::<f64>().unwrap()) / (2.0 * eps);
                assert!((fd - g[k]).abs() < 1e-7, "grad {k}: {fd} vs {}", g[k]);
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let cwm = Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let img = Tensor::zeros((1, 1, 4, 5), DType::F32, &Device::Cpu).unwrap();
        let e = gcm_score(&cwm, &img).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
    }
}
