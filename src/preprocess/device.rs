//! The preprocessing contract as candle custom ops, so that one call runs on
//! the device of its input: the CPU reference on the CPU, our kernels
//! (`kernels/preprocess.cu`) on a GPU.
//!
//! - `gcm-preprocess`: the camera bytes of the region's rows (u8) -> the 8-bit
//!   model input `[1, D, R, C]` (u8). Its `cpu_fwd` is the reference itself
//!   ([`super::camera_image`], [`super::crop`] and the `image` crate's
//!   resize); `cuda_fwd` runs `gcm_preprocess`.
//! - `gcm-scale`: the 8-bit input -> the network input `a[d] * (x / 255) +
//!   b[d]` (f32); `cpu_fwd` is [`super::scale`]'s formula, `cuda_fwd` runs
//!   `gcm_scale`.
//!
//! On a GPU only the camera bytes of the region's rows cross the bus (1 to 3
//! bytes a pixel, never floats), and the 8-bit input comes back (`D*R*C`
//! bytes) when [`super::prepare`] reads it.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::{convert, PixelFormat, PreprocessSpec, Roi, Skip};
use crate::data::image_io::{planar_from_dynamic, unit};

/// One uncompressed camera frame, as the camera delivered it.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    /// `GREY`, `YUYV` or `RGB3` (MJPEG is decoded before it becomes a frame).
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row to the next (V4L2 `bytesperline`; at least
    /// `width * bytes per pixel`).
    pub bytes_per_line: usize,
}

impl<'a> Frame<'a> {
    /// A frame whose rows follow each other without padding.
    pub fn packed(data: &'a [u8], format: PixelFormat, width: usize, height: usize) -> Self {
        Frame {
            data,
            format,
            width,
            height,
            bytes_per_line: width * format.bytes_per_pixel().unwrap_or(0),
        }
    }
}

/// The model input of a frame, on its device.
#[derive(Clone, Debug)]
pub struct OnDevice {
    /// 8-bit, `[1, D, R, C]` (u8).
    pub planar: Tensor,
    /// Scaled for the network, `[1, D, R, C]` (f32).
    pub scaled: Tensor,
}

/// Camera bytes -> the model input on `device`. Frames that do not fit the
/// spec are refused with the reason ([`Skip`]).
pub fn preprocess(frame: &Frame, spec: &PreprocessSpec, device: &Device) -> Result<OnDevice, Skip> {
    let (op, bytes) = PreprocessOp::new(frame, spec)?;
    let failed = |e: candle_core::Error| Skip::Corrupt(format!("preprocessing failed: {e}"));
    let raw = Tensor::from_slice(bytes, bytes.len(), device).map_err(failed)?;
    let planar = raw.apply_op1_no_bwd(&op).map_err(failed)?;
    let scaled = planar.apply_op1_no_bwd(&op.scale).map_err(failed)?;
    Ok(OnDevice { planar, scaled })
}

/// The camera bytes of the region's rows -> the 8-bit model input (row 0 of
/// the bytes is the region's first row).
#[derive(Clone, Debug)]
struct PreprocessOp {
    format: PixelFormat,
    bytes_per_line: usize,
    width: usize,
    /// The region, with `y_px` 0 (the bytes start at its first row).
    roi: Roi,
    rows: usize,
    cols: usize,
    channels: usize,
    scale: ScaleOp,
}

/// The 8-bit input -> `a[d] * (x / 255) + b[d]`, f32.
#[derive(Clone, Debug)]
struct ScaleOp {
    a: [f32; 3],
    b: [f32; 3],
}

fn bad(msg: String) -> Skip {
    Skip::Corrupt(format!("preprocessing: {msg}"))
}

impl PreprocessOp {
    /// Checks the frame against the spec; returns the op and the bytes it reads.
    fn new<'a>(frame: &Frame<'a>, spec: &PreprocessSpec) -> Result<(Self, &'a [u8]), Skip> {
        let (w, h, fmt) = (frame.width, frame.height, frame.format);
        let Some(bpp) = fmt.bytes_per_pixel() else {
            return Err(bad(format!("{} frames are decoded first", fmt.name())));
        };
        let limit = i32::MAX as usize;
        if w == 0 || h == 0 || w > limit || h > limit {
            return Err(bad(format!("frame of {w}x{h} pixels")));
        }
        if fmt == PixelFormat::Yuyv && w % 2 != 0 {
            return Err(bad(format!("a YUYV frame needs an even width, got {w}")));
        }
        if fmt == PixelFormat::Grey && spec.channels != 1 {
            return Err(Skip::Channels(
                "a GREY camera frame for a colour model".into(),
            ));
        }
        let row = w * bpp;
        if frame.bytes_per_line < row {
            return Err(bad(format!(
                "{} bytes per line for {w} {} pixels (at least {row})",
                frame.bytes_per_line,
                fmt.name()
            )));
        }
        let need = (h - 1) * frame.bytes_per_line + row;
        if frame.data.len() < need {
            return Err(bad(format!(
                "a {w}x{h} {} frame needs {need} bytes, got {}",
                fmt.name(),
                frame.data.len()
            )));
        }
        let roi = spec.roi.unwrap_or(Roi::whole(w as u32, h as u32));
        if !roi.fits(w as u32, h as u32) {
            return Err(roi.refusal(w as u32, h as u32));
        }
        if spec.rows == 0 || spec.cols == 0 || spec.rows > limit || spec.cols > limit {
            return Err(bad(format!("output size {}x{}", spec.cols, spec.rows)));
        }
        if spec.channels != 1 && spec.channels != 3 {
            return Err(Skip::Channels(format!(
                "the model takes 1 or 3 channels, not {}",
                spec.channels
            )));
        }
        let scale = ScaleOp::new(spec)?;
        let start = roi.y_px as usize * frame.bytes_per_line;
        let end = (roi.y_px + roi.height_px - 1) as usize * frame.bytes_per_line + row;
        let op = PreprocessOp {
            format: fmt,
            bytes_per_line: frame.bytes_per_line,
            width: w,
            roi: Roi { y_px: 0, ..roi },
            rows: spec.rows,
            cols: spec.cols,
            channels: spec.channels,
            scale,
        };
        Ok((op, &frame.data[start..end]))
    }

    fn shape(&self) -> Shape {
        Shape::from((1, self.channels, self.rows, self.cols))
    }

    /// The reference: the CPU backend on the region's rows.
    fn run_cpu(&self, src: &[u8]) -> candle_core::Result<Vec<u8>> {
        let buf = convert::Buffer {
            bytes: src,
            width: self.width as u32,
            height: self.roi.height_px,
            bytes_per_line: self.bytes_per_line,
        };
        let fail = |e: Skip| candle_core::Error::Msg(e.to_string());
        let img = super::camera_image(self.format, buf, self.channels).map_err(fail)?;
        let img = super::crop(img, Some(&self.roi)).map_err(fail)?;
        Ok(planar_from_dynamic(img, self.channels, self.rows, self.cols).data)
    }
}

impl ScaleOp {
    fn new(spec: &PreprocessSpec) -> Result<Self, Skip> {
        let affine = spec.scaling.affine(spec.channels);
        if affine.len() != spec.channels {
            return Err(Skip::Channels(format!(
                "{} scaling has {} channels, the model {}",
                spec.scaling.name(),
                affine.len(),
                spec.channels
            )));
        }
        let (mut a, mut b) = ([1.0f32; 3], [0.0f32; 3]);
        for (c, &(ac, bc)) in affine.iter().enumerate() {
            a[c] = ac;
            b[c] = bc;
        }
        Ok(ScaleOp { a, b })
    }
}

/// The launch of `gcm_preprocess` (one thread per output pixel) and of
/// `gcm_scale` (one per value) over `items`: blocks of `PRE_THREADS` (256).
#[cfg(any(feature = "cuda", test))]
fn pixel_launch(items: usize) -> candle_core::Result<crate::gpu::launch::Launch> {
    crate::gpu::launch::linear(items.div_ceil(256), 256)
}

/// The contiguous bytes of a u8 input.
fn bytes<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [u8]> {
    let CpuStorage::U8(bytes) = s else {
        candle_core::bail!("{what} takes u8")
    };
    let Some((lo, hi)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: the bytes must be contiguous")
    };
    Ok(&bytes[lo..hi])
}

impl CustomOp1 for PreprocessOp {
    fn name(&self) -> &'static str {
        "gcm-preprocess"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = self.run_cpu(bytes(s, l, "preprocess")?)?;
        Ok((CpuStorage::U8(out), self.shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;

        let bytes = s.as_cuda_slice::<u8>()?;
        let Some((lo, hi)) = l.contiguous_offsets() else {
            candle_core::bail!("preprocess: camera bytes must be contiguous")
        };
        let src = bytes.slice(lo..hi);
        let dev = &s.device;
        let len = self.channels * self.rows * self.cols;
        // SAFETY: allocation only; one thread per output pixel writes all of
        // its `channels` values, and the grid covers rows * cols pixels.
        let mut out = unsafe { dev.alloc::<u8>(len)? };
        let f = crate::gpu::ptx::function(dev, &crate::gpu::ptx::PREPROCESS, "gcm_preprocess")?;
        let stream = dev.cuda_stream();
        let i = |v: usize| v as i32;
        let code: i32 = match self.format {
            PixelFormat::Grey => 0,
            PixelFormat::Yuyv => 1,
            PixelFormat::Rgb24 => 2,
            PixelFormat::Mjpeg | PixelFormat::Nv12 | PixelFormat::Bayer(_) => {
                candle_core::bail!("preprocess: {} is converted first", self.format.name())
            }
        };
        let stride = self.bytes_per_line as u64;
        let r = &self.roi;
        let (rx, ry, rw, rh) = (
            r.x_px as i32,
            r.y_px as i32,
            r.width_px as i32,
            r.height_px as i32,
        );
        let (rows, cols, d) = (i(self.rows), i(self.cols), i(self.channels));
        let mut lb = stream.launch_builder(&f);
        lb.arg(&src).arg(&code).arg(&stride);
        lb.arg(&rx).arg(&ry).arg(&rw).arg(&rh);
        lb.arg(&rows).arg(&cols).arg(&d);
        lb.arg(&mut out);
        let cfg = pixel_launch(self.rows * self.cols)?.into();
        // SAFETY: the arguments match gcm_preprocess in kernels/preprocess.cu
        // (u8*, i32, u64, seven i32, u8*). `PreprocessOp::new` checked that
        // the region lies inside the frame and that the uploaded bytes hold
        // every row of it (row y starts at y * stride, the last row is
        // complete), so every read is in bounds; each thread writes only its
        // own pixel of `out`, sized above.
        unsafe { lb.launch(cfg) }.w()?;
        let out = candle_core::CudaStorage {
            slice: candle_core::cuda_backend::CudaStorageSlice::U8(out),
            device: dev.clone(),
        };
        Ok((out, self.shape()))
    }
}

impl CustomOp1 for ScaleOp {
    fn name(&self) -> &'static str {
        "gcm-scale"
    }

    /// [`super::scale`]'s formula.
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = bytes(s, l, "scale")?;
        let (_, d, r, c) = l.shape().dims4()?;
        let plane = r * c;
        let out: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let ch = (i / plane).min(d - 1);
                self.a[ch] * unit(p) + self.b[ch]
            })
            .collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;

        let x = s.as_cuda_slice::<u8>()?;
        let Some((lo, hi)) = l.contiguous_offsets() else {
            candle_core::bail!("scale: the input must be contiguous")
        };
        let x = x.slice(lo..hi);
        let (_, _, r, c) = l.shape().dims4()?;
        let (n, plane) = ((hi - lo) as u64, (r * c) as u64);
        let dev = &s.device;
        // SAFETY: allocation only; the kernel writes every one of the n values.
        let mut out = unsafe { dev.alloc::<f32>(n as usize)? };
        let f = crate::gpu::ptx::function(dev, &crate::gpu::ptx::PREPROCESS, "gcm_scale")?;
        let stream = dev.cuda_stream();
        let (a, b) = (self.a, self.b);
        let mut lb = stream.launch_builder(&f);
        lb.arg(&x).arg(&n).arg(&plane);
        lb.arg(&a[0]).arg(&a[1]).arg(&a[2]);
        lb.arg(&b[0]).arg(&b[1]).arg(&b[2]);
        lb.arg(&mut out);
        let cfg = pixel_launch(n as usize)?.into();
        // SAFETY: the arguments match gcm_scale in kernels/preprocess.cu
        // (u8*, u64, u64, six f32, f32*); thread i reads x[i] and writes
        // out[i] only for i < n, and both hold n values.
        unsafe { lb.launch(cfg) }.w()?;
        let out = candle_core::CudaStorage {
            slice: candle_core::cuda_backend::CudaStorageSlice::F32(out),
            device: dev.clone(),
        };
        Ok((out, l.shape().clone()))
    }
}

#[cfg(test)]
mod emu_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InputScaling;
    use crate::rng::Rng;

    fn spec(rows: usize, cols: usize, channels: usize) -> PreprocessSpec {
        PreprocessSpec {
            roi: None,
            rows,
            cols,
            channels,
            scaling: InputScaling::Raw,
        }
    }

    fn noise(rng: &mut Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.below(256) as u8).collect()
    }

    fn planar(t: &OnDevice) -> Vec<u8> {
        t.planar.flatten_all().unwrap().to_vec1::<u8>().unwrap()
    }

    #[test]
    fn roi_and_padded_rows_pick_the_right_pixels() {
        // 6x4 frame with 2 padding bytes a row; pixel value = 10 * y + x.
        let (w, h, bpl) = (6, 4, 8);
        let mut data = vec![255u8; bpl * h];
        for y in 0..h {
            for x in 0..w {
                data[y * bpl + x] = (10 * y + x) as u8;
            }
        }
        let f = Frame {
            data: &data,
            format: PixelFormat::Grey,
            width: w,
            height: h,
            bytes_per_line: bpl,
        };
        let mut s = spec(2, 3, 1);
        s.roi = Some(Roi {
            x_px: 2,
            y_px: 1,
            width_px: 3,
            height_px: 2,
        });
        let got = preprocess(&f, &s, &Device::Cpu).unwrap();
        assert_eq!(planar(&got), vec![12, 13, 14, 22, 23, 24]);
        let (_, bytes) = PreprocessOp::new(&f, &s).unwrap();
        assert_eq!(bytes.len(), bpl + w, "only the region's rows are uploaded");
    }

    /// The op on the CPU is the contract's CPU backend: the same 8-bit input
    /// and the same scaled input as [`super::super::prepare`] on the frame.
    #[test]
    fn the_op_on_the_cpu_is_the_reference() {
        let mut rng = Rng::new(3);
        let (w, h) = (38, 22);
        let scaling = InputScaling::Centred {
            mean: vec![0.4, 0.5, 0.6],
        };
        for (format, bpp) in [
            (PixelFormat::Grey, 1),
            (PixelFormat::Yuyv, 2),
            (PixelFormat::Rgb24, 3),
        ] {
            let data = noise(&mut rng, w * h * bpp);
            for d in [1, 3] {
                if format == PixelFormat::Grey && d == 3 {
                    continue;
                }
                let s = PreprocessSpec {
                    roi: Some(Roi {
                        x_px: 3,
                        y_px: 2,
                        width_px: 30,
                        height_px: 17,
                    }),
                    scaling: if d == 3 {
                        scaling.clone()
                    } else {
                        InputScaling::Inverted
                    },
                    ..spec(7, 11, d)
                };
                let f = Frame::packed(&data, format, w, h);
                let ours = preprocess(&f, &s, &Device::Cpu).unwrap();
                let fd = super::super::FrameData::Camera {
                    format,
                    width: w as u32,
                    height: h as u32,
                    bytes_per_line: 0,
                    bytes: data.clone(),
                };
                let want = super::super::prepare(&fd, &s, &Device::Cpu).unwrap();
                assert_eq!(planar(&ours), want.planar.data, "{format:?} d={d}");
                let (a, b) = (
                    ours.scaled.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    want.scaled.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert_eq!(a, b, "{format:?} d={d}");
            }
        }
    }

    #[test]
    fn bad_frames_and_regions_are_refused_by_name() {
        let data = vec![0u8; 10];
        let f = Frame::packed(&data, PixelFormat::Grey, 4, 4);
        let e = preprocess(&f, &spec(2, 2, 1), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("needs 16 bytes, got 10"), "{e}");
        let data = vec![0u8; 16];
        let f = Frame::packed(&data, PixelFormat::Grey, 4, 4);
        let mut s = spec(2, 2, 1);
        s.roi = Some(Roi {
            x_px: 2,
            y_px: 0,
            width_px: 3,
            height_px: 2,
        });
        let e = preprocess(&f, &s, &Device::Cpu).unwrap_err();
        assert_eq!(e.reason(), "roi");
        assert!(
            e.to_string().contains("does not fit in the 4x4 frame"),
            "{e}"
        );
        let odd = Frame::packed(&data, PixelFormat::Yuyv, 3, 2);
        let e = preprocess(&odd, &spec(2, 2, 1), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("even width"), "{e}");
        let rgb = Frame::packed(&[0; 48], PixelFormat::Rgb24, 4, 4);
        let e = preprocess(&rgb, &spec(2, 2, 2), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("1 or 3 channels"), "{e}");
        let mut s = spec(2, 2, 3);
        s.scaling = InputScaling::Centred { mean: vec![0.5] };
        let e = preprocess(&rgb, &s, &Device::Cpu).unwrap_err();
        assert!(
            e.to_string().contains("centred scaling has 1 channels"),
            "{e}"
        );
        let e = preprocess(&f, &spec(2, 2, 3), &Device::Cpu).unwrap_err();
        assert_eq!(e.reason(), "channels");
    }
}
