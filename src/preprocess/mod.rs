//! The preprocessing contract: camera bytes to model input, one definition
//! with two backends.
//!
//! ```text
//! bytes (GREY | YUYV | RGB3 | NV12 | MJPEG | image file | synthetic grey), width x height
//!   -> colour: each camera pixel to the model's channels, 8-bit
//!   -> crop to the region of interest (frame pixels)
//!   -> resize to the model's input: Triangle filter, clamped, rounded to 8 bits
//!   -> Planar u8 [D, R, C]            (the input as the model saw it: evidence)
//!   -> a[d] * (x / 255) + b[d]         -> [1, D, R, C] f32 (the network input)
//! ```
//!
//! **Colour**, per format, at the camera's resolution:
//!
//! | format | colour model (D = 3) | grey model (D = 1) |
//! |---|---|---|
//! | `GREY` | refused | the byte |
//! | `YUYV` | BT.601 limited range (16-235), integer: `c = max(Y-16, 0)`, `R = (298c + 409V' + 128) >> 8`, `G = (298c - 100U' - 208V' + 128) >> 8`, `B = (298c + 516U' + 128) >> 8`, clamped; a pixel pair shares U, V | the luma of that RGB |
//! | `RGB3` | the bytes | the luma |
//! | `NV12` | as `YUYV` (the same integer BT.601), a 2x2 block sharing U, V | the luma of that RGB |
//! | Bayer (`RGGB`, `BA81`, `RG10`, `pRAA`, ...) | the top 8 bits of each sample, demosaiced bilinearly ([`convert::demosaic`]) | the luma of that RGB |
//! | `MJPEG`, image files | the decoded RGB | the decoded grey, or the luma of the decoded RGB |
//!
//! The luma is the `image` crate's `to_luma8` ([`convert::luma`] spells it
//! out: Rec. 709 weights in f32, rounded). It is what `train` gives its grey models from a colour
//! PNG, and what a saved PNG of the converted frame gives it again, so a grey
//! model sees the same full-range grey on the line as in training (a YUYV
//! camera's raw Y, 16-235, would not be).
//!
//! **Resize** is the `image` crate's `resize_exact` with `FilterType::Triangle`
//! (what `train`, `eval` and `explain --resize` use): a vertical pass in f32,
//! a horizontal pass in f32, clamp to 0..255, round half away from zero. The
//! input as the model saw it is therefore 8-bit, exactly what `input.png`
//! stores; the **rounding rule** is that one rounding, after the resize.
//!
//! **Backends**: the CPU backend ([`reference`]) is the reference and runs
//! the conversion above and the `image` crate's resize. The CUDA backend
//! ([`device`], `kernels/preprocess.cu`) uploads the camera bytes of the
//! region's rows once and runs the same integer conversion and the same float
//! operations in the same order, with rounding intrinsics that forbid fused
//! multiply-adds, so its 8-bit input equals the CPU's bit for bit (the
//! stated tolerance is zero levels; the host emulation of the kernels and the
//! GPU tests hold it to that). MJPEG frames and image files are decoded on
//! the CPU first (there is no JPEG decoder on the GPU path), NV12 frames
//! converted there and uploaded as
//! 8-bit grey or RGB. The GPU returns only the 8-bit input (`D*R*C` bytes,
//! for the frame-health checks and the evidence); the scaled f32 input stays
//! on the device for the network.

use std::borrow::Cow;

use candle_core::{Device, Tensor};
use image::DynamicImage;
use serde::{Deserialize, Serialize};

pub mod convert;
pub mod device;

use crate::data::image_io::{
    channels_of, decode_bytes, planar_from_dynamic, unit, with_channels, Planar,
};
use crate::model::config::ModelConfig;
use crate::model::InputScaling;
use convert::ConvertError;

/// Pixel formats of camera frames; in configs by their V4L2 four-character
/// code (`YUYV`, `MJPEG`, `GREY`, `RGB3`, `NV12`, and the Bayer codes of
/// [`Bayer::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum PixelFormat {
    /// YUV 4:2:2 packed, `Y0 U Y1 V` per pixel pair (V4L2 `YUYV`).
    Yuyv,
    /// Motion JPEG: every frame a JPEG image.
    Mjpeg,
    /// 8-bit grey, one byte a pixel.
    Grey,
    /// 8-bit R, G, B, three bytes a pixel (V4L2 `RGB3`).
    Rgb24,
    /// YUV 4:2:0, two planes: `height` rows of Y, then `ceil(height / 2)`
    /// rows of interleaved U, V (one pair for each 2x2 block), every row
    /// `bytes_per_line` apart (V4L2 `NV12`, GStreamer `NV12`).
    Nv12,
    /// A raw Bayer mosaic (see [`convert::demosaic`]).
    Bayer(Bayer),
}

/// The colour of the mosaic's top-left 2x2 block, row by row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BayerOrder {
    Rggb,
    Bggr,
    Grbg,
    Gbrg,
}

impl BayerOrder {
    pub const ALL: [BayerOrder; 4] = [
        BayerOrder::Rggb,
        BayerOrder::Bggr,
        BayerOrder::Grbg,
        BayerOrder::Gbrg,
    ];

    /// The channel (0 R, 1 G, 2 B) of the sensor pixel at `(row, col)`.
    pub fn channel(self, row: usize, col: usize) -> usize {
        let quad: [usize; 4] = match self {
            BayerOrder::Rggb => [0, 1, 1, 2],
            BayerOrder::Bggr => [2, 1, 1, 0],
            BayerOrder::Grbg => [1, 0, 2, 1],
            BayerOrder::Gbrg => [1, 2, 0, 1],
        };
        quad[(row % 2) * 2 + col % 2]
    }
}

/// How a Bayer sample is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BayerDepth {
    /// One byte a sample.
    Eight,
    /// 10 bits in a 16-bit little-endian word (low bits).
    Ten,
    /// 12 bits in a 16-bit little-endian word (low bits).
    Twelve,
    /// MIPI CSI-2 RAW10: four samples in five bytes, the first four their
    /// high 8 bits, the fifth their low 2 bits.
    TenPacked,
}

/// A Bayer format: the mosaic's order and the samples' storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bayer {
    pub order: BayerOrder,
    pub depth: BayerDepth,
}

impl Bayer {
    /// Every Bayer format taken.
    pub fn all() -> impl Iterator<Item = Bayer> {
        [
            BayerDepth::Eight,
            BayerDepth::Ten,
            BayerDepth::Twelve,
            BayerDepth::TenPacked,
        ]
        .into_iter()
        .flat_map(|depth| BayerOrder::ALL.map(|order| Bayer { order, depth }))
    }

    /// The V4L2 four-character code: `RGGB BA81 GRBG GBRG` (8-bit),
    /// `RG10 BG10 BA10 GB10`, `RG12 BG12 BA12 GB12`, `pRAA pBAA pgAA pGAA`.
    pub fn name(self) -> &'static str {
        use BayerDepth::*;
        use BayerOrder::*;
        match (self.depth, self.order) {
            (Eight, Rggb) => "RGGB",
            (Eight, Bggr) => "BA81",
            (Eight, Grbg) => "GRBG",
            (Eight, Gbrg) => "GBRG",
            (Ten, Rggb) => "RG10",
            (Ten, Bggr) => "BG10",
            (Ten, Grbg) => "BA10",
            (Ten, Gbrg) => "GB10",
            (Twelve, Rggb) => "RG12",
            (Twelve, Bggr) => "BG12",
            (Twelve, Grbg) => "BA12",
            (Twelve, Gbrg) => "GB12",
            (TenPacked, Rggb) => "pRAA",
            (TenPacked, Bggr) => "pBAA",
            (TenPacked, Grbg) => "pgAA",
            (TenPacked, Gbrg) => "pGAA",
        }
    }

    /// Bytes of a row of `width` samples, unpadded.
    pub fn row_bytes(self, width: usize) -> usize {
        match self.depth {
            BayerDepth::Eight => width,
            BayerDepth::Ten | BayerDepth::Twelve => 2 * width,
            BayerDepth::TenPacked => width.div_ceil(4) * 5,
        }
    }
}

impl PixelFormat {
    /// Every format, for messages and tests.
    pub fn all() -> Vec<PixelFormat> {
        let mut v = vec![
            PixelFormat::Yuyv,
            PixelFormat::Mjpeg,
            PixelFormat::Grey,
            PixelFormat::Rgb24,
            PixelFormat::Nv12,
        ];
        v.extend(Bayer::all().map(PixelFormat::Bayer));
        v
    }

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            f => f.name().as_bytes().try_into().expect("four characters"),
        }
    }

    /// The name in configs and messages (the V4L2 code; `MJPEG` for `MJPG`).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Mjpeg => "MJPEG",
            PixelFormat::Grey => "GREY",
            PixelFormat::Rgb24 => "RGB3",
            PixelFormat::Nv12 => "NV12",
            PixelFormat::Bayer(b) => b.name(),
        }
    }

    /// Does the format carry colour?
    pub fn is_colour(self) -> bool {
        !matches!(self, PixelFormat::Grey)
    }

    /// Bytes per pixel of the single-plane formats the GPU kernel converts
    /// (`None` for those converted on the CPU first: MJPEG, NV12, Bayer).
    pub fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            PixelFormat::Grey => Some(1),
            PixelFormat::Yuyv => Some(2),
            PixelFormat::Rgb24 => Some(3),
            PixelFormat::Mjpeg | PixelFormat::Nv12 | PixelFormat::Bayer(_) => None,
        }
    }
}

impl TryFrom<String> for PixelFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        PixelFormat::all()
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = PixelFormat::all().iter().map(|f| f.name()).collect();
                format!("unknown pixel format {s:?} (one of {})", names.join(", "))
            })
    }
}

/// Read by name, the error raised at the value (so it names the value's line).
impl<'de> Deserialize<'de> for PixelFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = PixelFormat;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a pixel format name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PixelFormat, E> {
                PixelFormat::try_from(v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_str(Name)
    }
}

impl From<PixelFormat> for String {
    fn from(f: PixelFormat) -> String {
        f.name().to_string()
    }
}

/// A region of interest in frame pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    /// Left edge, pixels from the frame's left.
    pub x_px: u32,
    /// Top edge, pixels from the frame's top.
    pub y_px: u32,
    pub width_px: u32,
    pub height_px: u32,
}

impl Roi {
    /// The whole of a `width x height` frame.
    pub fn whole(width: u32, height: u32) -> Self {
        Roi {
            x_px: 0,
            y_px: 0,
            width_px: width,
            height_px: height,
        }
    }

    /// Whether the region is non-empty and lies inside a `width x height` frame.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        self.width_px > 0
            && self.height_px > 0
            && self.x_px as u64 + self.width_px as u64 <= width as u64
            && self.y_px as u64 + self.height_px as u64 <= height as u64
    }

    fn refusal(&self, width: u32, height: u32) -> Skip {
        Skip::Roi(format!(
            "ROI {}x{} at ({}, {}) does not fit in the {width}x{height} frame",
            self.width_px, self.height_px, self.x_px, self.y_px
        ))
    }
}

/// What the model needs from a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessSpec {
    /// Crop before resizing (frame pixels); whole frame when `None`.
    pub roi: Option<Roi>,
    /// Model input channels D (1 grey, 3 RGB).
    pub channels: usize,
    /// Model input rows R.
    pub rows: usize,
    /// Model input columns C.
    pub cols: usize,
    /// The model's input scaling (from its card).
    pub scaling: InputScaling,
}

impl PreprocessSpec {
    /// The model's input size, channels and scaling.
    pub fn for_model(cfg: &ModelConfig, roi: Option<Roi>) -> Self {
        PreprocessSpec {
            roi,
            channels: cfg.input_channels,
            rows: cfg.input_rows,
            cols: cfg.input_cols,
            scaling: cfg.scaling.clone(),
        }
    }
}

/// The pixels of a frame, in the form the source delivered them.
#[derive(Clone, Debug)]
pub enum FrameData {
    /// A camera buffer (copied out of the driver's buffer).
    Camera {
        format: PixelFormat,
        width: u32,
        height: u32,
        /// Row stride in bytes (0: packed).
        bytes_per_line: usize,
        bytes: Vec<u8>,
    },
    /// The bytes of an image file (replay); decoded when the frame is prepared.
    File { bytes: Vec<u8> },
    /// 8-bit grey, row-major, packed (synthetic).
    Grey {
        width: u32,
        height: u32,
        bytes: Vec<u8>,
    },
}

/// Why a frame was skipped (counted by reason, never fatal).
#[derive(Clone, Debug, PartialEq)]
pub enum Skip {
    /// The pixels do not decode or do not fit the format.
    Corrupt(String),
    /// The ROI does not fit in the frame.
    Roi(String),
    /// The frame's channels do not match the model's (e.g. a grey image file
    /// given to a colour model).
    Channels(String),
}

impl Skip {
    /// Every [`Skip::reason`], in the order `/metrics` lists them (each is
    /// shown, counted or not).
    pub const REASONS: [&'static str; 3] = ["corrupt", "roi", "channels"];

    /// The `reason` label of `gcm_frames_skipped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::Corrupt(_) => "corrupt",
            Skip::Roi(_) => "roi",
            Skip::Channels(_) => "channels",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Corrupt(m) | Skip::Roi(m) | Skip::Channels(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Skip {}

impl From<ConvertError> for Skip {
    fn from(e: ConvertError) -> Self {
        Skip::Corrupt(e.to_string())
    }
}

/// A prepared frame.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The input as the model saw it, 8-bit planar, on the host (the
    /// evidence's `input.png` and the frame-health checks).
    pub planar: Planar,
    /// The network input: scaled, `[1, D, R, C]` f32 on the device it was
    /// prepared for.
    pub scaled: Tensor,
}

/// The colour step on the CPU for an uncompressed camera buffer: the
/// frame's pixels with the model's channels (see the module docs).
pub fn camera_image(
    format: PixelFormat,
    buf: convert::Buffer,
    channels: usize,
) -> Result<DynamicImage, Skip> {
    let grey = channels == 1;
    Ok(match format {
        PixelFormat::Grey if !grey => {
            return Err(Skip::Channels(
                "a GREY camera frame for a colour model".into(),
            ))
        }
        PixelFormat::Grey => DynamicImage::ImageLuma8(convert::grey(buf)?),
        PixelFormat::Yuyv if grey => DynamicImage::ImageLuma8(convert::yuyv_to_luma(buf)?),
        PixelFormat::Yuyv => DynamicImage::ImageRgb8(convert::yuyv_to_rgb(buf)?),
        PixelFormat::Rgb24 => {
            with_channels(DynamicImage::ImageRgb8(convert::rgb24(buf)?), channels)
        }
        PixelFormat::Nv12 if grey => DynamicImage::ImageLuma8(convert::nv12_to_luma(buf)?),
        PixelFormat::Nv12 => DynamicImage::ImageRgb8(convert::nv12_to_rgb(buf)?),
        PixelFormat::Bayer(b) => with_channels(
            DynamicImage::ImageRgb8(convert::demosaic(buf, b)?),
            channels,
        ),
        PixelFormat::Mjpeg => {
            return Err(Skip::Corrupt(
                "an MJPEG frame is not an uncompressed buffer".into(),
            ))
        }
    })
}

/// Decodes/converts a frame to an 8-bit image with the model's channels.
pub fn to_image(data: &FrameData, channels: usize) -> Result<DynamicImage, Skip> {
    match data {
        FrameData::Camera {
            format: PixelFormat::Mjpeg,
            width,
            height,
            bytes,
            ..
        } => Ok(with_channels(
            convert::mjpeg(bytes, *width, *height)?,
            channels,
        )),
        FrameData::Camera {
            format,
            width,
            height,
            bytes_per_line,
            bytes,
        } => camera_image(
            *format,
            convert::Buffer {
                bytes,
                width: *width,
                height: *height,
                bytes_per_line: *bytes_per_line,
            },
            channels,
        ),
        FrameData::File { bytes } => {
            // Image files follow `explain`'s rule: their channels must be the model's.
            let img = decode_bytes(bytes)
                .map_err(|e| Skip::Corrupt(format!("cannot decode image: {e}")))?;
            let have = channels_of(&img);
            if have != channels {
                return Err(Skip::Channels(format!(
                    "image has {have} channel(s), the model takes {channels}"
                )));
            }
            Ok(with_channels(img, channels))
        }
        FrameData::Grey {
            width,
            height,
            bytes,
        } => camera_image(
            PixelFormat::Grey,
            convert::Buffer {
                bytes,
                width: *width,
                height: *height,
                bytes_per_line: 0,
            },
            channels,
        ),
    }
}

/// Crops to the ROI (error when it does not fit).
pub fn crop(img: DynamicImage, roi: Option<&Roi>) -> Result<DynamicImage, Skip> {
    let Some(r) = roi else { return Ok(img) };
    let (w, h) = (img.width(), img.height());
    if !r.fits(w, h) {
        return Err(r.refusal(w, h));
    }
    if *r == Roi::whole(w, h) {
        return Ok(img);
    }
    Ok(img.crop_imm(r.x_px, r.y_px, r.width_px, r.height_px))
}

/// The 8-bit planar input scaled for the network: `[1, D, R, C]` on the CPU.
///
/// Computed as `a * (x / 255) + b` per channel in f32, the same operations in
/// the same order as the network's own scaling, so the result is bit-identical
/// to feeding the raw input to `Predictor::forward`.
pub fn scale(planar: &Planar, scaling: &InputScaling) -> candle_core::Result<Tensor> {
    let hw = planar.rows * planar.cols;
    let ab = scaling.affine(planar.channels);
    let mut v = Vec::with_capacity(planar.data.len());
    for (d, chunk) in planar.data.chunks_exact(hw).enumerate() {
        let (a, b) = ab[d];
        v.extend(chunk.iter().map(|&p| a * unit(p) + b));
    }
    Tensor::from_vec(
        v,
        (1, planar.channels, planar.rows, planar.cols),
        &Device::Cpu,
    )
}

/// The frame with the model's channels, within the region of interest, at
/// full resolution: what the resize starts from (the evidence's `frame.png`).
pub fn full_frame(data: &FrameData, spec: &PreprocessSpec) -> Result<DynamicImage, Skip> {
    crop(to_image(data, spec.channels)?, spec.roi.as_ref())
}

/// The CPU backend, the reference: the 8-bit model input of a frame.
pub fn reference(data: &FrameData, spec: &PreprocessSpec) -> Result<Planar, Skip> {
    let img = full_frame(data, spec)?;
    Ok(planar_from_dynamic(
        img,
        spec.channels,
        spec.rows,
        spec.cols,
    ))
}

/// The contract on `device`: the CPU backend on the CPU, our kernels on a GPU
/// (see the module docs).
pub fn prepare(data: &FrameData, spec: &PreprocessSpec, device: &Device) -> Result<Prepared, Skip> {
    if device.is_cpu() {
        let planar = reference(data, spec)?;
        let scaled = scale(&planar, &spec.scaling)
            .map_err(|e| Skip::Corrupt(format!("cannot build the input tensor: {e}")))?;
        return Ok(Prepared { planar, scaled });
    }
    let frame = upload_form(data, spec.channels)?;
    let on = device::preprocess(&frame.as_frame(), spec, device)?;
    let planar = on
        .planar
        .flatten_all()
        .and_then(|t| t.to_vec1::<u8>())
        .map_err(|e| Skip::Corrupt(format!("cannot read the model input back: {e}")))?;
    Ok(Prepared {
        planar: Planar {
            channels: spec.channels,
            rows: spec.rows,
            cols: spec.cols,
            data: planar,
        },
        scaled: on.scaled,
    })
}

/// Camera bytes the kernel takes, owned or borrowed.
struct Upload<'a> {
    bytes: Cow<'a, [u8]>,
    format: PixelFormat,
    width: u32,
    height: u32,
    bytes_per_line: usize,
}

impl Upload<'_> {
    fn as_frame(&self) -> device::Frame<'_> {
        device::Frame {
            data: &self.bytes,
            format: self.format,
            width: self.width as usize,
            height: self.height as usize,
            bytes_per_line: if self.bytes_per_line == 0 {
                self.width as usize * self.format.bytes_per_pixel().unwrap_or(1)
            } else {
                self.bytes_per_line
            },
        }
    }
}

/// What a GPU takes of a frame: an uncompressed camera buffer as it is;
/// anything that must be decoded or converted first (MJPEG, NV12, image files) on the
/// CPU to 8-bit grey or RGB at full size.
fn upload_form(data: &FrameData, channels: usize) -> Result<Upload<'_>, Skip> {
    if let FrameData::Camera {
        format,
        width,
        height,
        bytes_per_line,
        bytes,
    } = data
    {
        if format.bytes_per_pixel().is_some() {
            if *format == PixelFormat::Grey && channels != 1 {
                return Err(Skip::Channels(
                    "a GREY camera frame for a colour model".into(),
                ));
            }
            return Ok(Upload {
                bytes: Cow::Borrowed(bytes),
                format: *format,
                width: *width,
                height: *height,
                bytes_per_line: *bytes_per_line,
            });
        }
    }
    if let FrameData::Grey {
        width,
        height,
        bytes,
    } = data
    {
        if channels != 1 {
            return Err(Skip::Channels("a grey frame for a colour model".into()));
        }
        return Ok(Upload {
            bytes: Cow::Borrowed(bytes),
            format: PixelFormat::Grey,
            width: *width,
            height: *height,
            bytes_per_line: 0,
        });
    }
    let img = to_image(data, channels)?;
    let (width, height) = (img.width(), img.height());
    let (format, bytes) = match img {
        DynamicImage::ImageLuma8(g) => (PixelFormat::Grey, g.into_raw()),
        other => (PixelFormat::Rgb24, other.to_rgb8().into_raw()),
    };
    Ok(Upload {
        bytes: Cow::Owned(bytes),
        format,
        width,
        height,
        bytes_per_line: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(data: &FrameData, spec: &PreprocessSpec) -> Result<Prepared, Skip> {
        super::prepare(data, spec, &Device::Cpu)
    }

    fn spec(ch: usize, roi: Option<Roi>) -> PreprocessSpec {
        PreprocessSpec {
            roi,
            channels: ch,
            rows: 4,
            cols: 4,
            scaling: InputScaling::Inverted,
        }
    }

    #[test]
    fn roi_crop_then_resize() {
        // 8x4 grey frame: left half 0, right half 200; ROI = right half.
        let bytes: Vec<u8> = (0..32).map(|i| if i % 8 >= 4 { 200 } else { 0 }).collect();
        let data = FrameData::Grey {
            width: 8,
            height: 4,
            bytes,
        };
        let roi = Roi {
            x_px: 4,
            y_px: 0,
            width_px: 4,
            height_px: 4,
        };
        let p = prepare(&data, &spec(1, Some(roi))).unwrap();
        assert!(p.planar.data.iter().all(|&b| b == 200));
        let v = p.scaled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| (x - (1.0 - 200.0 / 255.0)).abs() < 1e-6));
        let too_big = Roi { x_px: 5, ..roi };
        assert!(matches!(
            prepare(&data, &spec(1, Some(too_big))),
            Err(Skip::Roi(_))
        ));
    }

    #[test]
    fn scaling_matches_the_network_bit_for_bit() {
        let planar = Planar {
            channels: 3,
            rows: 2,
            cols: 2,
            data: (0..12).map(|i| (i * 21) as u8).collect(),
        };
        let scaling = InputScaling::Centred {
            mean: vec![0.1, 0.52, 0.33],
        };
        let ours = scale(&planar, &scaling).unwrap();
        let mut cfg = crate::model::ModelConfig::table3(4, 4, 3, vec!["a".into(), "b".into()]);
        cfg.scaling = scaling;
        let (a, b) = crate::model::gcm::scaling_tensors(&cfg, &Device::Cpu).unwrap();
        let theirs = planar
            .to_tensor(&Device::Cpu)
            .unwrap()
            .broadcast_mul(&a)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let (x, y) = (
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(x, y);
    }

    #[test]
    fn grey_camera_is_refused_for_a_colour_model_and_colour_becomes_luma() {
        let grey = FrameData::Camera {
            format: PixelFormat::Grey,
            width: 4,
            height: 4,
            bytes_per_line: 0,
            bytes: vec![9; 16],
        };
        assert!(matches!(
            prepare(&grey, &spec(3, None)),
            Err(Skip::Channels(_))
        ));
        let yuyv = FrameData::Camera {
            format: PixelFormat::Yuyv,
            width: 4,
            height: 4,
            bytes_per_line: 0,
            bytes: [77u8, 128].repeat(16),
        };
        // Limited-range Y = 77 is full-range grey (298 * (77 - 16) + 128) >> 8 = 71.
        let p = prepare(&yuyv, &spec(1, None)).unwrap();
        assert!(
            p.planar.data.iter().all(|&b| b == 71),
            "{:?}",
            p.planar.data
        );
        let p = prepare(&yuyv, &spec(3, None)).unwrap();
        assert_eq!(p.planar.data.len(), 48);
    }

    #[test]
    fn every_skip_reason_is_listed() {
        // One of each variant: a new variant belongs here and in REASONS.
        let every = [
            Skip::Corrupt(String::new()),
            Skip::Roi(String::new()),
            Skip::Channels(String::new()),
        ];
        let reasons: Vec<&str> = every.iter().map(Skip::reason).collect();
        assert_eq!(reasons, Skip::REASONS);
    }

    #[test]
    fn corrupt_mjpeg_is_a_skip() {
        let f = FrameData::Camera {
            format: PixelFormat::Mjpeg,
            width: 4,
            height: 4,
            bytes_per_line: 0,
            bytes: vec![0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3],
        };
        let e = prepare(&f, &spec(1, None)).unwrap_err();
        assert_eq!(e.reason(), "corrupt");
    }

    #[test]
    fn cut_jpegs_are_skipped_as_corrupt_never_decided() {
        use crate::data::jpeg::test_jpegs::{cuts, encode, scene, zero_padded};
        let mut wrong = Vec::new();
        for (grey, ch) in [(true, 1), (false, 3)] {
            let j = encode(&scene(40, 24, grey));
            let file = |bytes: Vec<u8>| FrameData::File { bytes };
            let camera = |bytes: Vec<u8>| FrameData::Camera {
                format: PixelFormat::Mjpeg,
                width: 40,
                height: 24,
                bytes_per_line: 0,
                bytes,
            };
            for (path, frame) in [
                ("replayed file", &file as &dyn Fn(Vec<u8>) -> FrameData),
                ("MJPEG frame", &camera),
            ] {
                let whole = prepare(&frame(j.clone()), &spec(ch, None)).unwrap();
                let padded = prepare(&frame(zero_padded(&j)), &spec(ch, None)).unwrap();
                assert_eq!(padded.planar, whole.planar, "{path}");
                for (what, bytes) in cuts(&j) {
                    match prepare(&frame(bytes), &spec(ch, None)) {
                        Err(Skip::Corrupt(_)) => {}
                        Err(other) => wrong.push(format!("{path}, {what}: skipped as {other:?}")),
                        Ok(_) => {
                            wrong.push(format!("{path} ({ch} ch), {what}: decided as if whole"))
                        }
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// A smooth colour scene, as a camera sees a cell under diffuse light.
    fn scene(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
            let wave = (6.0 * u + 4.0 * v).sin();
            image::Rgb([
                (40.0 + 170.0 * u + 20.0 * wave) as u8,
                (60.0 + 150.0 * v - 25.0 * wave) as u8,
                (120.0 + 60.0 * u * v + 30.0 * wave) as u8,
            ])
        })
    }

    /// The scene as a UVC camera's YUYV: BT.601 limited range, rounded, the
    /// chroma of a pixel pair averaged.
    fn as_yuyv(img: &image::RgbImage) -> Vec<u8> {
        let yuv = |p: &image::Rgb<u8>| {
            let [r, g, b] = p.0.map(f32::from);
            [
                16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0,
                128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0,
                128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0,
            ]
        };
        let byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        let mut out = Vec::new();
        for y in 0..img.height() {
            for x in (0..img.width()).step_by(2) {
                let (a, b) = (yuv(img.get_pixel(x, y)), yuv(img.get_pixel(x + 1, y)));
                let (u, v) = ((a[1] + b[1]) / 2.0, (a[2] + b[2]) / 2.0);
                out.extend([byte(a[0]), byte(u), byte(b[0]), byte(v)]);
            }
        }
        out
    }

    fn png(img: DynamicImage) -> Vec<u8> {
        crate::data::image_io::encode_png(&img).unwrap()
    }

    fn jpeg(img: &image::RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100)
            .encode_image(img)
            .unwrap();
        out
    }

    /// The same scene as every camera format and as the PNG the daemon
    /// would save of the converted frame gives the same model input: a grey
    /// model within one grey level (the YUYV camera's limited-range luma is
    /// expanded, not passed through; raw Y would be up to 16 levels off), a
    /// colour model within one level for YUYV and two for MJPEG (JPEG's own
    /// loss at quality 100 with 4:2:0 chroma).
    #[test]
    fn every_format_of_one_scene_gives_the_pngs_model_input() {
        let (w, h) = (128u32, 96u32);
        let rgb = scene(w, h);
        let camera = |format, bytes| FrameData::Camera {
            format,
            width: w,
            height: h,
            bytes_per_line: 0,
            bytes,
        };
        let luma = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
        let roi = Some(Roi {
            x_px: 8,
            y_px: 4,
            width_px: 112,
            height_px: 84,
        });
        for (d, tol_yuyv, tol_jpeg) in [(1usize, 1u8, 1u8), (3, 1, 2)] {
            let spec = PreprocessSpec {
                roi,
                channels: d,
                rows: 42,
                cols: 56,
                scaling: InputScaling::Raw,
            };
            let saved = if d == 1 {
                png(DynamicImage::ImageLuma8(luma.clone()))
            } else {
                png(DynamicImage::ImageRgb8(rgb.clone()))
            };
            let want = reference(&FrameData::File { bytes: saved }, &spec).unwrap();
            let mut formats = vec![
                ("YUYV", camera(PixelFormat::Yuyv, as_yuyv(&rgb)), tol_yuyv),
                ("MJPEG", camera(PixelFormat::Mjpeg, jpeg(&rgb)), tol_jpeg),
                (
                    "RGB3",
                    camera(PixelFormat::Rgb24, rgb.clone().into_raw()),
                    0,
                ),
            ];
            if d == 1 {
                formats.push((
                    "GREY",
                    camera(PixelFormat::Grey, luma.clone().into_raw()),
                    0,
                ));
            }
            for (name, frame, tol) in formats {
                let got = reference(&frame, &spec).unwrap();
                let worst = got
                    .data
                    .iter()
                    .zip(&want.data)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(
                    worst <= tol,
                    "{name}, D = {d}: {worst} levels from the PNG's"
                );
            }
        }
    }
}
