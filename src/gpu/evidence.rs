//! CCM evidence for the frames whose evidence is kept.
//!
//! The evidence of a decision is the class contribution map
//! `CCM = tile(CWM_j) x scaled input` of the decided (or any chosen) class j:
//! its plain mean is the class score. [`ccm_evidence`] builds it for chosen
//! (frame, class) [`Pick`]s, splits it into its positive part `max(CCM, 0)` and
//! its negative part `max(-CCM, 0)` (the two images people look at, as in the
//! GCM paper's Fig. 7), and quantises each part to `0..=levels` against its
//! own maximum:
//!
//! `q = round_half_even(v * (levels / max))`, stored value `q * max / levels`.
//!
//! So a stored part plus its maximum gives every CCM value back to within half
//! a step (`max / (2 * levels)`), and [`CcmEvidence::score`] recomputes the
//! class score from what is stored, within [`CcmEvidence::half_step`] of the
//! exact mean: that is what an auditor re-checks from the evidence files.
//!
//! On a GPU the CCM is computed and quantised there (`kernels/evidence.cu`),
//! and only the quantised parts of the picked maps come back to the host
//! (one byte a value for `levels <= 255`, four otherwise), never the `N`
//! float CWMs. On the CPU the same op runs its reference implementation.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::error::{Error, Result};

/// One map to build evidence for: batch item `frame`, class `class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub frame: usize,
    pub class: usize,
}

/// The quantised CCM of one [`Pick`].
#[derive(Clone, Debug, PartialEq)]
pub struct CcmEvidence {
    pub pick: Pick,
    /// Channels D of the scaled input (and so of the CCM).
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
    /// The level of each part's maximum (255 for 8-bit images).
    pub levels: u16,
    /// The largest CCM value, stored as `levels` in `positive` (0 when no
    /// value is positive).
    pub max_positive: f32,
    /// The largest magnitude of a negative CCM value, stored as `levels` in
    /// `negative` (0 when no value is negative).
    pub max_negative: f32,
    /// `max(CCM, 0)` quantised, `[D, R, C]` channel-major.
    pub positive: Vec<u16>,
    /// `max(-CCM, 0)` quantised, `[D, R, C]` channel-major.
    pub negative: Vec<u16>,
}

impl CcmEvidence {
    /// The class score recomputed from the stored evidence: the mean of the
    /// de-quantised CCM, `(sum(pos) * max_pos - sum(neg) * max_neg) / levels / (D*R*C)`.
    pub fn score(&self) -> f64 {
        let levels = self.levels as f64;
        let sum = |v: &[u16]| v.iter().map(|&q| q as u64).sum::<u64>() as f64;
        let pos = sum(&self.positive) * self.max_positive as f64 / levels;
        let neg = sum(&self.negative) * self.max_negative as f64 / levels;
        (pos - neg) / self.positive.len().max(1) as f64
    }

    /// Half a quantisation step of the coarser part: the most any stored value
    /// (and so [`Self::score`]) differs from the exact CCM value (its mean).
    pub fn half_step(&self) -> f64 {
        self.max_positive.max(self.max_negative) as f64 / (2.0 * self.levels as f64)
    }
}

/// The quantised CCM of each pick: `cwm` `[B, N, R, C]` and the scaled input
/// `[B, D, R, C]` (both f32, on the same device), `levels` in `1..=65535`.
/// Runs on the tensors' device; the results are on the host.
pub fn ccm_evidence(
    cwm: &Tensor,
    scaled: &Tensor,
    picks: &[Pick],
    levels: u16,
) -> Result<Vec<CcmEvidence>> {
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
    if levels == 0 {
        return Err(Error::Runtime("evidence: levels must be at least 1".into()));
    }
    if let Some(p) = picks.iter().find(|p| p.frame >= b || p.class >= n) {
        return Err(Error::Runtime(format!(
            "evidence: pick {p:?} outside a batch of {b} frames with {n} classes"
        )));
    }
    if picks.is_empty() {
        return Ok(Vec::new());
    }
    let flat: Vec<u32> = picks
        .iter()
        .flat_map(|p| [p.frame as u32, p.class as u32])
        .collect();
    let cwm = cwm.contiguous()?;
    let scaled = scaled.contiguous()?;
    let maxima = cwm.apply_op2_no_bwd(
        &scaled,
        &CcmMax {
            picks: flat.clone(),
        },
    )?;
    let quant = cwm.apply_op3_no_bwd(
        &scaled,
        &maxima,
        &CcmQuantise {
            picks: flat,
            levels,
        },
    )?;
    let maxima = maxima.to_vec2::<f32>()?;
    let quant: Vec<u16> = match quant.dtype() {
        DType::U8 => quant
            .flatten_all()?
            .to_vec1::<u8>()?
            .into_iter()
            .map(u16::from)
            .collect(),
        _ => quant
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|q| q as u16)
            .collect(),
    };
    let per = d * r * c;
    Ok(picks
        .iter()
        .enumerate()
        .map(|(k, &pick)| CcmEvidence {
            pick,
            channels: d,
            rows: r,
            cols: c,
            levels,
            max_positive: maxima[k][0],
            max_negative: maxima[k][1],
            positive: quant[2 * k * per..(2 * k + 1) * per].to_vec(),
            negative: quant[(2 * k + 1) * per..(2 * k + 2) * per].to_vec(),
        })
        .collect())
}

/// Per pick, the largest positive CCM value and the largest magnitude of a
/// negative one: `[K, 2]` f32.
struct CcmMax {
    /// `(frame, class)` pairs, flattened.
    picks: Vec<u32>,
}

/// The quantised parts: `[K, 2, D, R, C]`, u8 when `levels <= 255`, else u32.
struct CcmQuantise {
    picks: Vec<u32>,
    levels: u16,
}

/// `(n, d, hw)` of contiguous CWM and input layouts.
fn sizes(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (_, n, r, c) = l1.shape().dims4()?;
    let (_, d, _, _) = l2.shape().dims4()?;
    Ok((n, d, r * c))
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("evidence: contiguous f32 input expected"),
    }
}

/// The CCM values of one pick, channel-major: `CWM[b, j, p] * I[b, ch, p]`.
fn ccm_values<'a>(
    cwm: &'a [f32],
    img: &'a [f32],
    (b, j): (usize, usize),
    (n, d, hw): (usize, usize, usize),
) -> impl Iterator<Item = f32> + 'a {
    let m = &cwm[(b * n + j) * hw..(b * n + j + 1) * hw];
    let im = &img[b * d * hw..(b + 1) * d * hw];
    (0..d).flat_map(move |ch| (0..hw).map(move |p| m[p] * im[ch * hw + p]))
}

/// `rint(v * mul)`, at most `levels` (v >= 0), as in the kernel.
fn level_of(v: f32, mul: f32, levels: f32) -> f32 {
    (v * mul).round_ties_even().min(levels)
}

impl CustomOp2 for CcmMax {
    fn name(&self) -> &'static str {
        "gcm-ccm-max"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let sz = sizes(l1, l2)?;
        let (cwm, img) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let mut out = Vec::with_capacity(self.picks.len());
        for p in self.picks.chunks_exact(2) {
            let (mut mp, mut mn) = (0.0f32, 0.0f32);
            for v in ccm_values(cwm, img, (p[0] as usize, p[1] as usize), sz) {
                mp = mp.max(v);
                mn = mn.max(-v);
            }
            out.extend([mp, mn]);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.picks.len() / 2, 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::max(&self.picks, s1, l1, s2, l2)
    }
}

impl CustomOp3 for CcmQuantise {
    fn name(&self) -> &'static str {
        "gcm-ccm-quantise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let sz = sizes(l1, l2)?;
        let (cwm, img, maxima) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let levels = self.levels as f32;
        let mul = |m: f32| if m > 0.0 { levels / m } else { 0.0 };
        let k = self.picks.len() / 2;
        let mut out: Vec<u32> = Vec::with_capacity(2 * k * sz.1 * sz.2);
        for (i, p) in self.picks.chunks_exact(2).enumerate() {
            let pick = (p[0] as usize, p[1] as usize);
            let (mulp, muln) = (mul(maxima[2 * i]), mul(maxima[2 * i + 1]));
            let pos = ccm_values(cwm, img, pick, sz).map(|v| {
                if v > 0.0 {
                    level_of(v, mulp, levels)
                } else {
                    0.0
                }
            });
            out.extend(pos.map(|q| q as u32));
            let neg = ccm_values(cwm, img, pick, sz).map(|v| {
                if v < 0.0 {
                    level_of(-v, muln, levels)
                } else {
                    0.0
                }
            });
            out.extend(neg.map(|q| q as u32));
        }
        let (_, _, r, c) = l1.shape().dims4()?;
        let shape = Shape::from((k, 2, sz.1, r, c));
        let storage = if self.levels <= 255 {
            CpuStorage::U8(out.into_iter().map(|q| q as u8).collect())
        } else {
            CpuStorage::U32(out)
        };
        Ok((storage, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::quantise(&self.picks, self.levels, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The launches of `kernels/evidence.cu`.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use super::sizes;
    use crate::gpu::ptx;

    fn f32_view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
            None => candle_core::bail!("evidence: contiguous f32 input expected"),
        }
    }

    pub(super) fn max(
        picks: &[u32],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, d, hw) = sizes(l1, l2)?;
        let (cwm, img) = (f32_view(s1, l1)?, f32_view(s2, l2)?);
        let dev = &s1.device;
        let k = picks.len() / 2;
        let picks = dev.clone_htod(picks)?;
        // SAFETY: allocation only; block k of the kernel writes maxima[2k] and
        // maxima[2k + 1], and the grid has one block per pick.
        let mut maxima: CudaSlice<f32> = unsafe { dev.alloc::<f32>(2 * k)? };
        let f = ptx::function(dev, &ptx::EVIDENCE, "gcm_ccm_max")?;
        let stream = dev.cuda_stream();
        let (nn, dd, hh) = (n as u64, d as u64, hw as u64);
        let mut lb = stream.launch_builder(&f);
        lb.arg(&cwm).arg(&img).arg(&picks).arg(&mut maxima);
        lb.arg(&nn).arg(&dd).arg(&hh);
        // SAFETY: matches gcm_ccm_max (f32*, f32*, u32*, f32*, three u64).
        // `ccm_evidence` checked every pick against B and N, and the inputs
        // are contiguous [B, N, hw] and [B, D, hw] views: reads in bounds.
        unsafe { lb.launch(ptx::linear(k, 256)?) }.w()?;
        let out = CudaStorage {
            slice: CudaStorageSlice::F32(maxima),
            device: dev.clone(),
        };
        Ok((out, Shape::from((k, 2))))
    }

    pub(super) fn quantise(
        picks: &[u32],
        levels: u16,
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
        (s3, l3): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let (n, d, hw) = sizes(l1, l2)?;
        let (_, _, r, c) = l1.shape().dims4()?;
        let (cwm, img, maxima) = (f32_view(s1, l1)?, f32_view(s2, l2)?, f32_view(s3, l3)?);
        let dev = &s1.device;
        let k = picks.len() / 2;
        let picks = dev.clone_htod(picks)?;
        let stream = dev.cuda_stream();
        let (kk, nn, dd, hh, lv) = (k as u64, n as u64, d as u64, hw as u64, levels as f32);
        let len = 2 * k * d * hw;
        let cfg = ptx::strided_2d(hw, k, 256);
        let slice = if levels <= 255 {
            // SAFETY: allocation only; the grid strides over every pick (y)
            // and plane position (x), and writes both parts of all channels.
            let mut out = unsafe { dev.alloc::<u8>(len)? };
            let f = ptx::function(dev, &ptx::EVIDENCE, "gcm_ccm_quantise_u8")?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&cwm)
                .arg(&img)
                .arg(&picks)
                .arg(&maxima)
                .arg(&mut out);
            lb.arg(&kk).arg(&nn).arg(&dd).arg(&hh).arg(&lv);
            // SAFETY: matches gcm_ccm_quantise_u8 (f32*, f32*, u32*, f32*,
            // u8*, four u64, f32); picks were checked against B and N, and
            // `out` holds K * 2 * D * hw values.
            unsafe { lb.launch(cfg) }.w()?;
            CudaStorageSlice::U8(out)
        } else {
            // SAFETY: as above, with u32 values.
            let mut out = unsafe { dev.alloc::<u32>(len)? };
            let f = ptx::function(dev, &ptx::EVIDENCE, "gcm_ccm_quantise_u32")?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&cwm)
                .arg(&img)
                .arg(&picks)
                .arg(&maxima)
                .arg(&mut out);
            lb.arg(&kk).arg(&nn).arg(&dd).arg(&hh).arg(&lv);
            // SAFETY: matches gcm_ccm_quantise_u32, as above.
            unsafe { lb.launch(cfg) }.w()?;
            CudaStorageSlice::U32(out)
        };
        let out = CudaStorage {
            slice,
            device: dev.clone(),
        };
        Ok((out, Shape::from((k, 2, d, r, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::score::gcm_score;
    use crate::rng::Rng;
    use candle_core::Device;

    fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn parts_hold_the_ccm_to_half_a_step_and_reproduce_the_score() {
        let mut rng = Rng::new(3);
        for (b, n, d, r, c, levels) in [
            (2, 3, 1, 5, 7, 255u16),
            (1, 2, 3, 16, 16, 255),
            (3, 4, 1, 9, 4, 65535),
            (1, 1, 3, 1, 1, 15),
        ] {
            let cwm = rand(&mut rng, &[b, n, r, c]);
            let img = rand(&mut rng, &[b, d, r, c]);
            let picks: Vec<Pick> = (0..b)
                .map(|f| Pick {
                    frame: f,
                    class: (f + 1) % n,
                })
                .collect();
            let ev = ccm_evidence(&cwm, &img, &picks, levels).unwrap();
            let scores = gcm_score(&cwm, &img).unwrap().to_vec2::<f32>().unwrap();
            let ccm = crate::model::score::ccm(&cwm, &img).unwrap();
            for e in &ev {
                let exact: Vec<f32> = ccm
                    .get(e.pick.frame)
                    .unwrap()
                    .get(e.pick.class)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let maxp = exact.iter().cloned().fold(0.0f32, f32::max);
                let maxn = exact.iter().map(|v| -v).fold(0.0f32, f32::max);
                assert_eq!((e.max_positive, e.max_negative), (maxp, maxn));
                assert!(e.positive.iter().chain(&e.negative).all(|&q| q <= levels));
                for (i, &v) in exact.iter().enumerate() {
                    let stored = e.positive[i] as f64 * maxp as f64 / levels as f64
                        - e.negative[i] as f64 * maxn as f64 / levels as f64;
                    assert!(
                        (stored - v as f64).abs() <= e.half_step() * (1.0 + 1e-5),
                        "value {i}: {stored} vs {v}"
                    );
                    assert!(e.positive[i] == 0 || e.negative[i] == 0);
                }
                let s = scores[e.pick.frame][e.pick.class] as f64;
                assert!(
                    (e.score() - s).abs() <= e.half_step() * (1.0 + 1e-5) + 1e-6,
                    "score {} vs {s}",
                    e.score()
                );
            }
        }
    }

    #[test]
    fn maxima_reach_the_top_level_and_empty_parts_stay_zero() {
        // CWM >= 0 and input >= 0: no negative part.
        let cwm =
            Tensor::from_vec(vec![0.0f32, 0.5, 1.0, 2.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let img =
            Tensor::from_vec(vec![1.0f32, 1.0, 0.25, 0.5], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let ev = ccm_evidence(&cwm, &img, &[Pick { frame: 0, class: 0 }], 255).unwrap();
        let e = &ev[0];
        assert_eq!(e.max_positive, 1.0);
        assert_eq!(e.max_negative, 0.0);
        // CCM = [0, 0.5, 0.25, 1.0] -> levels 0, 127.5 -> 128 (half to even), 63.75 -> 64, 255.
        assert_eq!(e.positive, vec![0, 128, 64, 255]);
        assert_eq!(e.negative, vec![0, 0, 0, 0]);
    }

    #[test]
    fn bad_picks_and_types_are_refused() {
        let cwm = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let img = Tensor::zeros((2, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let e = ccm_evidence(&cwm, &img, &[Pick { frame: 2, class: 0 }], 255).unwrap_err();
        assert!(e.to_string().contains("outside a batch of 2 frames"), "{e}");
        let e = ccm_evidence(&cwm, &img, &[Pick { frame: 0, class: 3 }], 255).unwrap_err();
        assert!(e.to_string().contains("with 3 classes"), "{e}");
        let e = ccm_evidence(&cwm.to_dtype(DType::F64).unwrap(), &img, &[], 255).unwrap_err();
        assert!(e.to_string().contains("f32"), "{e}");
        assert!(ccm_evidence(&cwm, &img, &[], 255).unwrap().is_empty());
    }
}
