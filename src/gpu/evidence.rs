//! CCM evidence for the frames whose evidence is kept, computed where the
//! maps are.
//!
//! The evidence of a decision is the class contribution map
//! `CCM = tile(CWM_j) x scaled input` of a class j: its plain mean is the
//! class score. The evidence format ([`crate::evidence`]) stores each CCM as
//! its positive part and the magnitude of its negative part, quantised to 16
//! bits against each part's maximum ([`QuantCcm`]). [`ccm_evidence`] computes
//! exactly those [`QuantCcm`]s (bit for bit the same as `QuantCcm::new` on
//! the host maps) for chosen (frame, class) [`Pick`]s, on the device the
//! network ran on.
//!
//! On a GPU the CCM is built, split and quantised there (`kernels/evidence.cu`)
//! and only the picked maps' 16-bit parts come back to the host (4 bytes a
//! value for both parts), never the N float CWMs of a batch. On the CPU the
//! same op runs its reference, which is `QuantCcm::new` itself.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use crate::engine::ops::f32_slice;
use crate::error::{Error, Result};
use crate::evidence::{QuantCcm, QuantSum};
#[cfg(any(feature = "cuda", test))]
use crate::gpu::launch::{self, Launch};

/// One map to build evidence for: batch item `frame`, class `class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub frame: usize,
    pub class: usize,
}

/// The quantised CCM of each pick, in pick order: `cwm` `[B, N, R, C]` and
/// the scaled input `[B, D, R, C]`, both f32 on the same device. The result
/// is on the host and equals `QuantCcm::new(&FrameMaps::ccm_of(class))` of
/// each pick's frame.
pub fn ccm_evidence(cwm: &Tensor, scaled: &Tensor, picks: &[Pick]) -> Result<Vec<QuantCcm>> {
    let Some((flat, per)) = checked(cwm, scaled, picks)? else {
        return Ok(Vec::new());
    };
    let rows = cwm
        .contiguous()?
        .apply_op2_no_bwd(&scaled.contiguous()?, &CcmQuant { picks: flat })?
        .to_vec2::<u32>()?;
    Ok(rows.iter().map(|row| unpack(row, per)).collect())
}

/// What check (a) needs of each pick, in pick order: the sums of the
/// quantised parts ([`QuantSum`], equal to `QuantCcm::new(..).sum()`), six
/// words a pick from the device instead of the maps.
pub fn ccm_sums(cwm: &Tensor, scaled: &Tensor, picks: &[Pick]) -> Result<Vec<QuantSum>> {
    let Some((flat, per)) = checked(cwm, scaled, picks)? else {
        return Ok(Vec::new());
    };
    let rows = cwm
        .contiguous()?
        .apply_op2_no_bwd(&scaled.contiguous()?, &CcmSums { picks: flat })?
        .to_vec2::<u32>()?;
    Ok(rows.iter().map(|row| unpack_sums(row, per)).collect())
}

/// The picks as `(frame, class)` words and the values per map, or `None`
/// when there are no picks; errors name what does not fit.
fn checked(cwm: &Tensor, scaled: &Tensor, picks: &[Pick]) -> Result<Option<(Vec<u32>, usize)>> {
    let (b, n, r, c) = cwm.dims4()?;
    let (bi, d, ri, ci) = scaled.dims4()?;
    if (b, r, c) != (bi, ri, ci) {
        return Err(Error::Runtime(format!(
            "evidence: CWM {:?} and input {:?} disagree on batch or size",
            cwm.dims(),
            scaled.dims()
        )));
    }
    if cwm.dtype() != DType::F32 || scaled.dtype() != DType::F32 {
        return Err(Error::Runtime(format!(
            "evidence takes f32 tensors, got {:?} and {:?}",
            cwm.dtype(),
            scaled.dtype()
        )));
    }
    if let Some(p) = picks.iter().find(|p| p.frame >= b || p.class >= n) {
        return Err(Error::Runtime(format!(
            "evidence: pick {p:?} outside a batch of {b} frames with {n} classes"
        )));
    }
    if picks.is_empty() {
        return Ok(None);
    }
    let flat = picks
        .iter()
        .flat_map(|p| [p.frame as u32, p.class as u32])
        .collect();
    Ok(Some((flat, d * r * c)))
}

/// One output row: `[max_pos bits, max_neg bits, pos | neg << 16 ...]`.
/// A part's scale from its maximum's f32 bits (as `QuantCcm::new`).
fn scale(bits: u32) -> f64 {
    let m = f32::from_bits(bits) as f64;
    if m > 0.0 {
        m / 65535.0
    } else {
        0.0
    }
}

/// One row of the sums op: `[max_pos, max_neg, sum_pos lo, hi, sum_neg lo, hi]`.
fn unpack_sums(row: &[u32], len: usize) -> QuantSum {
    let wide = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    QuantSum {
        scale_pos: scale(row[0]),
        scale_neg: scale(row[1]),
        pos: wide(row[2], row[3]),
        neg: wide(row[4], row[5]),
        len,
    }
}

fn unpack(row: &[u32], per: usize) -> QuantCcm {
    let vals = &row[2..2 + per];
    QuantCcm {
        scale_pos: scale(row[0]),
        scale_neg: scale(row[1]),
        pos: vals.iter().map(|&v| (v & 0xffff) as u16).collect(),
        neg: vals.iter().map(|&v| (v >> 16) as u16).collect(),
    }
}

/// The quantised CCMs of the picks: u32 `[K, 2 + D*R*C]` (see [`unpack`]).
struct CcmQuant {
    /// `(frame, class)` pairs, flattened.
    picks: Vec<u32>,
}

/// `(n, d, hw)` of contiguous CWM and input layouts.
fn sizes(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (_, n, r, c) = l1.shape().dims4()?;
    let (_, d, _, _) = l2.shape().dims4()?;
    Ok((n, d, r * c))
}

// The method signatures are candle's `CustomOp2`, the same for every op.
impl CustomOp2 for CcmQuant {
    fn name(&self) -> &'static str {
        "gcm-ccm-quant"
    }

    /// The reference: `QuantCcm::new` of each pick's CCM, packed.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d, hw) = sizes(l1, l2)?;
        let (cwm, img) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let k = self.picks.len() / 2;
        let mut out = Vec::with_capacity(k * (2 + d * hw));
        for p in self.picks.chunks_exact(2) {
            let (b, j) = (p[0] as usize, p[1] as usize);
            let ccm = pick_ccm(cwm, img, (b, j), (n, d, hw));
            let q = QuantCcm::new(&ccm);
            let max = |v: &[f32], sign: f32| v.iter().fold(0f32, |a, &x| a.max(sign * x));
            out.push(max(&ccm, 1.0).to_bits());
            out.push(max(&ccm, -1.0).to_bits());
            out.extend(
                q.pos
                    .iter()
                    .zip(&q.neg)
                    .map(|(&a, &b)| a as u32 | ((b as u32) << 16)),
            );
        }
        Ok((CpuStorage::U32(out), Shape::from((k, 2 + d * hw))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};

        use crate::gpu::ptx;

        let (n, d, hw) = sizes(l1, l2)?;
        let (cwm, img) = (f32_view(s1, l1)?, f32_view(s2, l2)?);
        let dev = &s1.device;
        let k = self.picks.len() / 2;
        let picks = dev.clone_htod(self.picks.as_slice())?;
        let stream = dev.cuda_stream();
        // SAFETY: allocation only; the max kernel writes the two head words of
        // every row (one block per pick) and the quantise kernel, launched
        // after it on the same stream, every value of every row.
        let mut out = unsafe { dev.alloc::<u32>(k * (2 + d * hw))? };
        let (kk, nn, dd, hh) = (k as u64, n as u64, d as u64, hw as u64);
        {
            let f = ptx::function(dev, &ptx::EVIDENCE, "gcm_ccm_max")?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&cwm).arg(&img).arg(&picks).arg(&mut out);
            lb.arg(&nn).arg(&dd).arg(&hh);
            // SAFETY: matches gcm_ccm_max (f32*, f32*, u32*, u32*, three
            // u64). `ccm_evidence` checked every pick against B and N; the
            // inputs are contiguous [B, N, hw] and [B, D, hw] views and `out`
            // holds K rows of 2 + D*hw words: every access is in bounds.
            unsafe { lb.launch(per_pick_launch(k)?.into()) }.w()?;
        }
        {
            let f = ptx::function(dev, &ptx::EVIDENCE, "gcm_ccm_quantise")?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&cwm).arg(&img).arg(&picks).arg(&mut out);
            lb.arg(&kk).arg(&nn).arg(&dd).arg(&hh);
            // SAFETY: matches gcm_ccm_quantise (f32*, f32*, u32*, u32*, four
            // u64); same bounds as above.
            unsafe { lb.launch(quantise_launch(hw, k).into()) }.w()?;
        }
        let out = candle_core::CudaStorage {
            slice: CudaStorageSlice::U32(out),
            device: dev.clone(),
        };
        Ok((out, Shape::from((k, 2 + d * hw))))
    }
}

/// The quantised parts' sums of the picks: u32 `[K, 6]` (see [`unpack_sums`]).
struct CcmSums {
    /// `(frame, class)` pairs, flattened.
    picks: Vec<u32>,
}

impl CustomOp2 for CcmSums {
    fn name(&self) -> &'static str {
        "gcm-ccm-sums"
    }

    /// The reference: `QuantCcm::new(..).sum()` of each pick's CCM, packed.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d, hw) = sizes(l1, l2)?;
        let (cwm, img) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let k = self.picks.len() / 2;
        let mut out = Vec::with_capacity(k * 6);
        for p in self.picks.chunks_exact(2) {
            let (b, j) = (p[0] as usize, p[1] as usize);
            let ccm = pick_ccm(cwm, img, (b, j), (n, d, hw));
            let s = QuantCcm::new(&ccm).sum();
            let max = |sign: f32| ccm.iter().fold(0f32, |a, &x| a.max(sign * x));
            out.extend([max(1.0).to_bits(), max(-1.0).to_bits()]);
            out.extend([s.pos as u32, (s.pos >> 32) as u32]);
            out.extend([s.neg as u32, (s.neg >> 32) as u32]);
        }
        Ok((CpuStorage::U32(out), Shape::from((k, 6))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};

        use crate::gpu::ptx;

        let (n, d, hw) = sizes(l1, l2)?;
        let (cwm, img) = (f32_view(s1, l1)?, f32_view(s2, l2)?);
        let dev = &s1.device;
        let k = self.picks.len() / 2;
        let picks = dev.clone_htod(self.picks.as_slice())?;
        let stream = dev.cuda_stream();
        // SAFETY: allocation only; thread 0 of each pick's block writes its
        // six words.
        let mut out = unsafe { dev.alloc::<u32>(k * 6)? };
        let (nn, dd, hh) = (n as u64, d as u64, hw as u64);
        let f = ptx::function(dev, &ptx::EVIDENCE, "gcm_ccm_qsum")?;
        let mut lb = stream.launch_builder(&f);
        lb.arg(&cwm).arg(&img).arg(&picks).arg(&mut out);
        lb.arg(&nn).arg(&dd).arg(&hh);
        // SAFETY: matches gcm_ccm_qsum (f32*, f32*, u32*, u32*, three u64).
        // `ccm_sums` checked every pick against B and N; the inputs are
        // contiguous [B, N, hw] and [B, D, hw] views and `out` holds K rows
        // of 6 words, one block per pick: every access is in bounds.
        unsafe { lb.launch(per_pick_launch(k)?.into()) }.w()?;
        let out = candle_core::CudaStorage {
            slice: CudaStorageSlice::U32(out),
            device: dev.clone(),
        };
        Ok((out, Shape::from((k, 6))))
    }
}

/// The CCM of pick `(b, j)` from contiguous host maps.
fn pick_ccm(
    cwm: &[f32],
    img: &[f32],
    (b, j): (usize, usize),
    (n, d, hw): (usize, usize, usize),
) -> Vec<f32> {
    let m = &cwm[(b * n + j) * hw..(b * n + j + 1) * hw];
    img[b * d * hw..(b + 1) * d * hw]
        .chunks_exact(hw.max(1))
        .flat_map(|ch| ch.iter().zip(m).map(|(&x, &w)| x * w))
        .collect()
}

/// The launch of `gcm_ccm_max` and `gcm_ccm_qsum`: one block of
/// `EV_THREADS` (256) per pick.
#[cfg(any(feature = "cuda", test))]
fn per_pick_launch(k: usize) -> candle_core::Result<Launch> {
    launch::linear(k, 256)
}

/// The launch of `gcm_ccm_quantise`: grid-striding, x over the `hw` plane,
/// y over the `k` picks.
#[cfg(any(feature = "cuda", test))]
fn quantise_launch(hw: usize, k: usize) -> Launch {
    launch::strided_2d(hw, k, 256)
}

/// The contiguous f32 view of a CUDA input.
#[cfg(feature = "cuda")]
fn f32_view<'a>(
    s: &'a candle_core::CudaStorage,
    l: &Layout,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
        None => candle_core::bail!("evidence: contiguous f32 input expected"),
    }
}

#[cfg(test)]
mod emu_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::FrameMaps;
    use crate::model::score::gcm_score;
    use crate::model::score::tests::rand;
    use crate::rng::Rng;
    use candle_core::Device;

    /// The op is the evidence format's own quantisation, bit for bit, and the
    /// stored parts give the score back within the format's tolerance.
    #[test]
    fn picks_equal_the_evidence_formats_quantisation() {
        let mut rng = Rng::new(3);
        for (b, n, d, r, c) in [
            (2, 3, 1, 5, 7),
            (1, 2, 3, 16, 16),
            (3, 4, 1, 9, 4),
            (1, 1, 3, 1, 1),
        ] {
            let cwm = rand(&mut rng, &[b, n, r, c]);
            let img = rand(&mut rng, &[b, d, r, c]);
            let picks: Vec<Pick> = (0..b)
                .flat_map(|f| {
                    [
                        Pick {
                            frame: f,
                            class: (f + 1) % n,
                        },
                        Pick { frame: f, class: 0 },
                    ]
                })
                .collect();
            let got = ccm_evidence(&cwm, &img, &picks).unwrap();
            let scores = gcm_score(&cwm, &img).unwrap().to_vec2::<f32>().unwrap();
            for (q, p) in got.iter().zip(&picks) {
                let maps = FrameMaps::from_batch(&img, &cwm, p.frame).unwrap();
                assert_eq!(*q, QuantCcm::new(&maps.ccm_of(p.class)), "{p:?}");
                let s = scores[p.frame][p.class] as f64;
                assert!(
                    (q.score() - s).abs() <= q.tolerance(s),
                    "{} vs {s}",
                    q.score()
                );
            }
        }
    }

    #[test]
    fn empty_parts_have_zero_scale() {
        // CWM >= 0 and input >= 0: no negative part.
        let cwm =
            Tensor::from_vec(vec![0.0f32, 0.5, 1.0, 2.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let img =
            Tensor::from_vec(vec![1.0f32, 1.0, 0.25, 0.5], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let q = ccm_evidence(&cwm, &img, &[Pick { frame: 0, class: 0 }])
            .unwrap()
            .remove(0);
        assert_eq!(q.scale_neg, 0.0);
        assert_eq!(q.neg, vec![0, 0, 0, 0]);
        assert_eq!(q.scale_pos, 1.0 / 65535.0);
        // CCM = [0, 0.5, 0.25, 1.0]: 0.5 * 65535 = 32767.5 rounds away from zero.
        assert_eq!(q.pos, vec![0, 32768, 16384, 65535]);
    }

    #[test]
    fn bad_picks_and_types_are_refused() {
        let cwm = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let img = Tensor::zeros((2, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let e = ccm_evidence(&cwm, &img, &[Pick { frame: 2, class: 0 }]).unwrap_err();
        assert!(e.to_string().contains("outside a batch of 2 frames"), "{e}");
        let e = ccm_evidence(&cwm, &img, &[Pick { frame: 0, class: 3 }]).unwrap_err();
        assert!(e.to_string().contains("with 3 classes"), "{e}");
        let e = ccm_evidence(&cwm.to_dtype(DType::F64).unwrap(), &img, &[]).unwrap_err();
        assert!(e.to_string().contains("f32"), "{e}");
        assert!(ccm_evidence(&cwm, &img, &[]).unwrap().is_empty());
    }
}
