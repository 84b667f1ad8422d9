//! Camera frame -> model input: crop, colour conversion, resize, scaling.
//!
//! The daemon calls [`preprocess`] with the bytes a camera delivered and gets
//! the model's input `[1, D, R, C]` (f32) on its device. On a GPU only the
//! camera bytes of the region of interest's rows cross the bus (1 to 3 bytes a
//! pixel, never 4-byte floats), and the conversion runs as one kernel
//! (`kernels/preprocess.cu`); on the CPU the same op runs its reference
//! implementation ([`preprocess_cpu`] is that path, spelled out).
//!
//! What the op computes, in f32:
//!
//! 1. **Crop** to the [`Roi`] (the whole frame by default).
//! 2. **Colour** to the model's channels D, per camera pixel, in 0..255:
//!    - GREY: the byte (on every channel when D = 3);
//!    - YUYV (4:2:2, byte order Y0 U Y1 V, full range): D = 1 takes Y; D = 3
//!      converts with the JFIF coefficients (R = Y + 1.402 V', G = Y -
//!      0.344136 U' - 0.714136 V', B = Y + 1.772 U', U' = U - 128, V' = V -
//!      128, each clamped to 0..255);
//!    - RGB24: D = 3 takes R, G, B; D = 1 takes the Rec. 709 luma
//!      `0.2126 R + 0.7152 G + 0.0722 B`, the grey value a colour training
//!      image gets from the `image` crate's `to_luma8` (which then rounds it
//!      to a byte; this op keeps the fraction).
//! 3. **Resize** to R x C with a triangle (tent) filter whose support widens
//!    by the downscaling factor: the `image` crate's `FilterType::Triangle`,
//!    which `explain --resize` and the training data loader use. Equal sizes
//!    give the pixels unchanged.
//! 4. **Scale**: `x = value / 255`, then the model's [`InputScaling`]
//!    `a[d] * x + b[d]` ([`InputScaling::Raw`] leaves x in [0, 1], the input
//!    [`crate::model::Predictor::forward`] expects; the model's own scaling
//!    gives the scaled input that `FoldedGcm::cwm` and `gcm_score` take).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::config::{InputScaling, ModelConfig};

/// Pixel formats of camera frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// 8-bit grey, one byte a pixel (V4L2 `GREY`).
    Grey,
    /// YUV 4:2:2, two bytes a pixel, `Y0 U Y1 V` per pixel pair (V4L2 `YUYV`).
    Yuyv,
    /// 8-bit R, G, B, three bytes a pixel (V4L2 `RGB3`).
    Rgb24,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Grey => 1,
            PixelFormat::Yuyv => 2,
            PixelFormat::Rgb24 => 3,
        }
    }

    /// The code `kernels/preprocess.cu` uses.
    #[cfg(feature = "cuda")]
    fn code(self) -> i32 {
        match self {
            PixelFormat::Grey => 0,
            PixelFormat::Yuyv => 1,
            PixelFormat::Rgb24 => 2,
        }
    }
}

/// One camera frame, as the camera delivered it.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row to the next (V4L2 `bytesperline`; at least
    /// `width * bytes_per_pixel`).
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
            bytes_per_line: width * format.bytes_per_pixel(),
        }
    }
}

/// A region of interest in frame pixels: columns `x..x + width`, rows
/// `y..y + height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Roi {
    /// Whether the region is non-empty and lies inside a `width x height` frame.
    pub fn fits(&self, width: usize, height: usize) -> bool {
        self.width > 0
            && self.height > 0
            && self.x.checked_add(self.width).is_some_and(|e| e <= width)
            && self.y.checked_add(self.height).is_some_and(|e| e <= height)
    }
}

/// What the model wants from a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessSpec {
    /// The part of the frame the model sees; `None` is the whole frame.
    pub roi: Option<Roi>,
    /// Output rows R.
    pub rows: usize,
    /// Output columns C.
    pub cols: usize,
    /// Output channels D (1 or 3).
    pub channels: usize,
    /// Applied last; [`InputScaling::Raw`] leaves values in [0, 1].
    pub scaling: InputScaling,
}

impl PreprocessSpec {
    /// The model's input size, channels and scaling (the scaled input).
    pub fn for_model(cfg: &ModelConfig, roi: Option<Roi>) -> Self {
        PreprocessSpec {
            roi,
            rows: cfg.input_rows,
            cols: cfg.input_cols,
            channels: cfg.input_channels,
            scaling: cfg.scaling.clone(),
        }
    }
}

/// Camera bytes -> `[1, D, R, C]` f32 on `device`: our kernel on a GPU, the
/// reference implementation on the CPU. Errors name what does not fit (frame
/// size, region of interest, channels).
pub fn preprocess(frame: &Frame, spec: &PreprocessSpec, device: &Device) -> Result<Tensor> {
    let (op, bytes) = PreprocessOp::new(frame, spec)?;
    let raw = Tensor::from_slice(bytes, bytes.len(), device)?;
    Ok(raw.apply_op1_no_bwd(&op)?)
}

/// The CPU reference of [`preprocess`] (the same op on `Device::Cpu`).
pub fn preprocess_cpu(frame: &Frame, spec: &PreprocessSpec) -> Result<Tensor> {
    preprocess(frame, spec, &Device::Cpu)
}

/// The op on the bytes of the region's rows (row 0 of them is the region's
/// first row).
#[derive(Clone, Debug)]
struct PreprocessOp {
    format: PixelFormat,
    bytes_per_line: usize,
    roi: Roi,
    rows: usize,
    cols: usize,
    channels: usize,
    a: [f32; 3],
    b: [f32; 3],
}

fn bad(msg: String) -> Error {
    Error::Runtime(format!("preprocessing: {msg}"))
}

impl PreprocessOp {
    /// Checks the frame against the spec; returns the op and the bytes it reads.
    fn new<'a>(frame: &Frame<'a>, spec: &PreprocessSpec) -> Result<(Self, &'a [u8])> {
        let (w, h, fmt) = (frame.width, frame.height, frame.format);
        let limit = i32::MAX as usize;
        if w == 0 || h == 0 || w > limit || h > limit {
            return Err(bad(format!("frame of {w}x{h} pixels")));
        }
        if fmt == PixelFormat::Yuyv && w % 2 != 0 {
            return Err(bad(format!("a YUYV frame needs an even width, got {w}")));
        }
        let row = w * fmt.bytes_per_pixel();
        if frame.bytes_per_line < row {
            return Err(bad(format!(
                "{} bytes per line for {w} {fmt:?} pixels (at least {row})",
                frame.bytes_per_line
            )));
        }
        let need = (h - 1) * frame.bytes_per_line + row;
        if frame.data.len() < need {
            return Err(bad(format!(
                "a {w}x{h} {fmt:?} frame needs {need} bytes, got {}",
                frame.data.len()
            )));
        }
        let roi = spec.roi.unwrap_or(Roi {
            x: 0,
            y: 0,
            width: w,
            height: h,
        });
        if !roi.fits(w, h) {
            return Err(bad(format!(
                "region of interest {roi:?} does not fit a {w}x{h} frame"
            )));
        }
        if spec.rows == 0 || spec.cols == 0 || spec.rows > limit || spec.cols > limit {
            return Err(bad(format!("output size {}x{}", spec.cols, spec.rows)));
        }
        if spec.channels != 1 && spec.channels != 3 {
            return Err(bad(format!(
                "the model takes 1 or 3 channels, not {}",
                spec.channels
            )));
        }
        let affine = spec.scaling.affine(spec.channels);
        if affine.len() != spec.channels {
            return Err(bad(format!(
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
        let start = roi.y * frame.bytes_per_line;
        let end = (roi.y + roi.height - 1) * frame.bytes_per_line + row;
        let op = PreprocessOp {
            format: fmt,
            bytes_per_line: frame.bytes_per_line,
            roi: Roi { y: 0, ..roi },
            rows: spec.rows,
            cols: spec.cols,
            channels: spec.channels,
            a,
            b,
        };
        Ok((op, &frame.data[start..end]))
    }

    /// The reference: the kernel's formula, in the kernel's order.
    fn run_cpu(&self, src: &[u8]) -> Vec<f32> {
        let (rows, cols, d) = (self.rows, self.cols, self.channels);
        let plane = rows * cols;
        let mut out = vec![0.0f32; d * plane];
        let ys: Vec<Axis> = (0..rows)
            .map(|o| Axis::new(o, self.roi.height, rows))
            .collect();
        let xs: Vec<Axis> = (0..cols)
            .map(|o| Axis::new(o, self.roi.width, cols))
            .collect();
        for (oy, ay) in ys.iter().enumerate() {
            for (ox, ax) in xs.iter().enumerate() {
                let sy: f32 = (ay.left..ay.right).map(|y| ay.tap(y)).sum();
                let sx: f32 = (ax.left..ax.right).map(|x| ax.tap(x)).sum();
                let mut acc = [0.0f32; 3];
                for y in ay.left..ay.right {
                    let wy = ay.tap(y) / sy;
                    let mut row = [0.0f32; 3];
                    for x in ax.left..ax.right {
                        let wx = ax.tap(x) / sx;
                        let v = self.fetch(src, self.roi.x + x, self.roi.y + y);
                        for c in 0..d {
                            row[c] += wx * v[c];
                        }
                    }
                    for c in 0..d {
                        acc[c] += wy * row[c];
                    }
                }
                let i = oy * cols + ox;
                for c in 0..d {
                    out[c * plane + i] = self.a[c] * (acc[c] / 255.0) + self.b[c];
                }
            }
        }
        out
    }

    /// The model channels of camera pixel (x, y), in 0..255.
    fn fetch(&self, src: &[u8], x: usize, y: usize) -> [f32; 3] {
        let row = &src[y * self.bytes_per_line..];
        match self.format {
            PixelFormat::Grey => [row[x] as f32; 3],
            PixelFormat::Yuyv => {
                let yy = row[2 * x] as f32;
                if self.channels == 1 {
                    return [yy, 0.0, 0.0];
                }
                let pair = &row[4 * (x / 2)..];
                let (u, v) = (pair[1] as f32 - 128.0, pair[3] as f32 - 128.0);
                let clamp = |t: f32| t.clamp(0.0, 255.0);
                [
                    clamp(yy + 1.402 * v),
                    clamp(yy - 0.344136 * u - 0.714136 * v),
                    clamp(yy + 1.772 * u),
                ]
            }
            PixelFormat::Rgb24 => {
                let p = &row[3 * x..3 * x + 3];
                if self.channels == 1 {
                    let l = 0.2126 * p[0] as f32 + 0.7152 * p[1] as f32 + 0.0722 * p[2] as f32;
                    return [l, 0.0, 0.0];
                }
                [p[0] as f32, p[1] as f32, p[2] as f32]
            }
        }
    }
}

/// The taps of one output coordinate along one axis (as in the kernel).
struct Axis {
    /// Input indices `left..right`.
    left: usize,
    right: usize,
    /// Input coordinate of the output pixel's centre.
    centre: f32,
    /// `max(1, in / out)`: how much the filter widens.
    sratio: f32,
}

impl Axis {
    fn new(o: usize, in_size: usize, out_size: usize) -> Self {
        let ratio = in_size as f32 / out_size as f32;
        let sratio = if ratio < 1.0 { 1.0 } else { ratio };
        let support = sratio;
        let centre = (o as f32 + 0.5) * ratio;
        let left = ((centre - support).floor() as i64).clamp(0, in_size as i64 - 1);
        let right = ((centre + support).ceil() as i64).clamp(left + 1, in_size as i64);
        Axis {
            left: left as usize,
            right: right as usize,
            centre: centre - 0.5,
            sratio,
        }
    }

    fn tap(&self, i: usize) -> f32 {
        let x = ((i as f32 - self.centre) / self.sratio).abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    }
}

impl CustomOp1 for PreprocessOp {
    fn name(&self) -> &'static str {
        "gcm-preprocess"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::U8(bytes) = s else {
            candle_core::bail!("preprocess takes camera bytes (u8)")
        };
        let Some((lo, hi)) = l.contiguous_offsets() else {
            candle_core::bail!("preprocess: camera bytes must be contiguous")
        };
        let out = self.run_cpu(&bytes[lo..hi]);
        Ok((
            CpuStorage::F32(out),
            Shape::from((1, self.channels, self.rows, self.cols)),
        ))
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
        let mut out = unsafe { dev.alloc::<f32>(len)? };
        let f = crate::gpu::ptx::function(dev, &crate::gpu::ptx::PREPROCESS, "gcm_preprocess")?;
        let stream = dev.cuda_stream();
        let i = |v: usize| v as i32;
        let (format, stride) = (self.format.code(), self.bytes_per_line as u64);
        let (rx, ry, rw, rh) = (
            i(self.roi.x),
            i(self.roi.y),
            i(self.roi.width),
            i(self.roi.height),
        );
        let (rows, cols, d) = (i(self.rows), i(self.cols), i(self.channels));
        let (a, b) = (self.a, self.b);
        let mut lb = stream.launch_builder(&f);
        lb.arg(&src).arg(&format).arg(&stride);
        lb.arg(&rx).arg(&ry).arg(&rw).arg(&rh);
        lb.arg(&rows).arg(&cols).arg(&d);
        lb.arg(&a[0])
            .arg(&a[1])
            .arg(&a[2])
            .arg(&b[0])
            .arg(&b[1])
            .arg(&b[2]);
        lb.arg(&mut out);
        let cfg = crate::gpu::ptx::linear((self.rows * self.cols).div_ceil(256), 256)?;
        // SAFETY: the arguments match gcm_preprocess in
        // kernels/preprocess.cu (u8*, i32, u64, seven i32, six f32, f32*).
        // `PreprocessOp::new` checked that the region lies inside the frame
        // and that the uploaded bytes hold every row of it (row y starts at
        // y * stride, the last row is complete), so every read is in bounds;
        // each thread writes only its own pixel of `out`, sized above.
        unsafe { lb.launch(cfg) }.w()?;
        let out = candle_core::CudaStorage {
            slice: candle_core::cuda_backend::CudaStorageSlice::F32(out),
            device: dev.clone(),
        };
        Ok((out, Shape::from((1, self.channels, self.rows, self.cols))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image_io::planar_from_dynamic;
    use crate::rng::Rng;
    use image::{DynamicImage, GrayImage, RgbImage};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn spec(rows: usize, cols: usize, channels: usize) -> PreprocessSpec {
        PreprocessSpec {
            roi: None,
            rows,
            cols,
            channels,
            scaling: InputScaling::Raw,
        }
    }

    /// `spec` with the region `[x, y, width, height]`.
    fn with_roi(spec: PreprocessSpec, [x, y, width, height]: [usize; 4]) -> PreprocessSpec {
        PreprocessSpec {
            roi: Some(Roi {
                x,
                y,
                width,
                height,
            }),
            ..spec
        }
    }

    fn noise(rng: &mut Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.below(256) as u8).collect()
    }

    #[test]
    fn grey_at_its_own_size_is_the_bytes_over_255() {
        let mut rng = Rng::new(1);
        let data = noise(&mut rng, 7 * 5);
        let f = Frame::packed(&data, PixelFormat::Grey, 7, 5);
        let t = preprocess_cpu(&f, &spec(5, 7, 1)).unwrap();
        assert_eq!(t.dims(), &[1, 1, 5, 7]);
        let want: Vec<f32> = data.iter().map(|&b| b as f32 / 255.0).collect();
        assert_eq!(values(&t), want);
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
        let s = with_roi(spec(2, 3, 1), [2, 1, 3, 2]);
        let got: Vec<u8> = values(&preprocess_cpu(&f, &s).unwrap())
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        assert_eq!(got, vec![12, 13, 14, 22, 23, 24]);
    }

    #[test]
    fn yuyv_gives_luma_for_grey_and_jfif_rgb_for_colour() {
        // Two pixels: Y0 = 100, Y1 = 200, U = 90, V = 160.
        let data = [100u8, 90, 200, 160];
        let f = Frame::packed(&data, PixelFormat::Yuyv, 2, 1);
        let grey = values(&preprocess_cpu(&f, &spec(1, 2, 1)).unwrap());
        assert_eq!(grey, vec![100.0 / 255.0, 200.0 / 255.0]);
        let rgb = values(&preprocess_cpu(&f, &spec(1, 2, 3)).unwrap());
        let (u, v) = (90.0f32 - 128.0, 160.0f32 - 128.0);
        for (i, y) in [100.0f32, 200.0].into_iter().enumerate() {
            let want = [
                (y + 1.402 * v).clamp(0.0, 255.0),
                (y - 0.344136 * u - 0.714136 * v).clamp(0.0, 255.0),
                (y + 1.772 * u).clamp(0.0, 255.0),
            ];
            for c in 0..3 {
                let got = rgb[c * 2 + i] * 255.0;
                assert!(
                    (got - want[c]).abs() < 1e-3,
                    "pixel {i} ch {c}: {got} vs {}",
                    want[c]
                );
            }
        }
    }

    #[test]
    fn scaling_is_applied_per_channel() {
        let data = [0u8, 51, 255, 102, 0, 255];
        let f = Frame::packed(&data, PixelFormat::Rgb24, 2, 1);
        let mut s = spec(1, 2, 3);
        s.scaling = InputScaling::Centred {
            mean: vec![0.5, 0.25, 0.0],
        };
        let got = values(&preprocess_cpu(&f, &s).unwrap());
        let raw = [0.0, 102.0, 51.0, 0.0, 255.0, 255.0].map(|v: f32| v / 255.0);
        let want = [
            raw[0] - 0.5,
            raw[1] - 0.5,
            raw[2] - 0.25,
            raw[3] - 0.25,
            raw[4],
            raw[5],
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        s.scaling = InputScaling::Inverted;
        let inv = values(&preprocess_cpu(&f, &s).unwrap());
        for (g, r) in inv.iter().zip(raw) {
            assert!((g - (1.0 - r)).abs() < 1e-6);
        }
    }

    /// Against the `image` crate's Triangle resize (the training data path),
    /// which rounds its result to bytes: within half a level plus rounding.
    #[test]
    fn resize_matches_the_image_crate_triangle_filter() {
        let mut rng = Rng::new(7);
        for (w, h, cols, rows) in [
            (64, 48, 32, 32),
            (40, 30, 56, 20),
            (300, 300, 96, 96),
            (9, 7, 4, 3),
        ] {
            let grey = noise(&mut rng, w * h);
            let f = Frame::packed(&grey, PixelFormat::Grey, w, h);
            let ours = values(&preprocess_cpu(&f, &spec(rows, cols, 1)).unwrap());
            let img = DynamicImage::ImageLuma8(
                GrayImage::from_raw(w as u32, h as u32, grey.clone()).unwrap(),
            );
            let theirs = planar_from_dynamic(img, 1, rows, cols).data;
            for (o, t) in ours.iter().zip(&theirs) {
                assert!(
                    (o * 255.0 - *t as f32).abs() <= 0.5 + 1e-3,
                    "{w}x{h}->{cols}x{rows}: {} vs {t}",
                    o * 255.0
                );
            }
            let rgb = noise(&mut rng, 3 * w * h);
            let f = Frame::packed(&rgb, PixelFormat::Rgb24, w, h);
            let img = DynamicImage::ImageRgb8(
                RgbImage::from_raw(w as u32, h as u32, rgb.clone()).unwrap(),
            );
            for d in [1, 3] {
                let ours = values(&preprocess_cpu(&f, &spec(rows, cols, d)).unwrap());
                let theirs = planar_from_dynamic(img.clone(), d, rows, cols).data;
                assert_eq!(ours.len(), theirs.len());
                // For grey the image crate also rounds the luma before resizing.
                let tol = if d == 1 { 1.0 } else { 0.5 } + 1e-3;
                for (o, t) in ours.iter().zip(&theirs) {
                    assert!(
                        (o * 255.0 - *t as f32).abs() <= tol,
                        "rgb d={d}: {} vs {t}",
                        o * 255.0
                    );
                }
            }
        }
    }

    #[test]
    fn bad_frames_and_regions_are_refused_by_name() {
        let data = vec![0u8; 10];
        let f = Frame::packed(&data, PixelFormat::Grey, 4, 4);
        let e = preprocess_cpu(&f, &spec(2, 2, 1)).unwrap_err().to_string();
        assert!(e.contains("needs 16 bytes, got 10"), "{e}");
        let data = vec![0u8; 16];
        let f = Frame::packed(&data, PixelFormat::Grey, 4, 4);
        let s = with_roi(spec(2, 2, 1), [2, 0, 3, 2]);
        let e = preprocess_cpu(&f, &s).unwrap_err().to_string();
        assert!(e.contains("does not fit a 4x4 frame"), "{e}");
        let odd = Frame::packed(&data, PixelFormat::Yuyv, 3, 2);
        let e = preprocess_cpu(&odd, &spec(2, 2, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("even width"), "{e}");
        let e = preprocess_cpu(&f, &spec(2, 2, 2)).unwrap_err().to_string();
        assert!(e.contains("1 or 3 channels"), "{e}");
        let mut s = spec(2, 2, 3);
        s.scaling = InputScaling::Centred { mean: vec![0.5] };
        let e = preprocess_cpu(&f, &s).unwrap_err().to_string();
        assert!(e.contains("centred scaling has 1 channels"), "{e}");
    }

    #[test]
    fn only_the_regions_rows_are_uploaded() {
        let data = vec![7u8; 10 * 8];
        let f = Frame::packed(&data, PixelFormat::Grey, 10, 8);
        let s = with_roi(spec(2, 2, 1), [1, 3, 4, 2]);
        let (_, bytes) = PreprocessOp::new(&f, &s).unwrap();
        assert_eq!(bytes.len(), 2 * 10);
    }
}
