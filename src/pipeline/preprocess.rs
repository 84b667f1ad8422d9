//! Frame preparation on the CPU: camera bytes to model input.
//!
//! ```text
//! bytes (YUYV | MJPEG | GREY | image file | synthetic grey), width x height
//!   -> colour conversion to the model's channels (colour -> grey by luma)
//!   -> ROI crop (frame pixels)
//!   -> resize to the model's input (triangle filter, as `explain` does)
//!   -> Planar u8 [D, R, C]        (the input as the model saw it: evidence)
//!   -> x / 255, the model's InputScaling  -> [1, D, R, C] f32 (the network input)
//! ```
//!
//! [`prepare`] is the whole stage; a GPU implementation of the same contract
//! (bytes + [`PrepSpec`] -> scaled `[1, D, R, C]` tensor on the device, plus
//! the 8-bit planar input for the evidence) can replace it without touching
//! the rest of the pipeline. The resize is the same code `explain` uses, so a
//! replayed file gets exactly the scores `explain` gives it.

use candle_core::{Device, Tensor};
use image::DynamicImage;

use super::convert::{self, ConvertError};
use super::frame::FrameData;
use crate::config::{PixelFormat, RoiConfig};
use crate::data::image_io::{
    channels_of, decode_bytes, planar_from_dynamic, unit, with_channels, Planar,
};
use crate::model::InputScaling;

/// What the model needs from a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepSpec {
    /// Crop before resizing (frame pixels); whole frame when `None`.
    pub roi: Option<RoiConfig>,
    /// Model input channels D (1 grey, 3 RGB).
    pub channels: usize,
    /// Model input rows R.
    pub rows: usize,
    /// Model input columns C.
    pub cols: usize,
    /// The model's input scaling (from its card).
    pub scaling: InputScaling,
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

impl From<ConvertError> for Skip {
    fn from(e: ConvertError) -> Self {
        Skip::Corrupt(e.to_string())
    }
}

/// A prepared frame.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The input as the model saw it, 8-bit planar (the evidence's `input.png`).
    pub planar: Planar,
    /// The network input: scaled, `[1, D, R, C]` f32 on the CPU.
    pub scaled: Tensor,
}

/// Decodes/converts a frame to an image with the model's channels.
pub fn to_image(data: &FrameData, channels: usize) -> Result<DynamicImage, Skip> {
    let grey = channels == 1;
    Ok(match data {
        FrameData::Camera {
            format,
            width,
            height,
            bytes_per_line,
            bytes,
        } => {
            let buf = convert::Buffer {
                bytes,
                width: *width,
                height: *height,
                bytes_per_line: *bytes_per_line,
            };
            match format {
                PixelFormat::Grey => {
                    if !grey {
                        return Err(Skip::Channels(
                            "a GREY camera frame for a colour model".into(),
                        ));
                    }
                    DynamicImage::ImageLuma8(convert::grey(buf)?)
                }
                PixelFormat::Yuyv if grey => DynamicImage::ImageLuma8(convert::yuyv_to_grey(buf)?),
                PixelFormat::Yuyv => DynamicImage::ImageRgb8(convert::yuyv_to_rgb(buf)?),
                PixelFormat::Mjpeg => {
                    with_channels(convert::mjpeg(bytes, *width, *height)?, channels)
                }
            }
        }
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
            img
        }
        FrameData::Grey {
            width,
            height,
            bytes,
        } => {
            if !grey {
                return Err(Skip::Channels("a grey frame for a colour model".into()));
            }
            DynamicImage::ImageLuma8(convert::grey(convert::Buffer {
                bytes,
                width: *width,
                height: *height,
                bytes_per_line: 0,
            })?)
        }
    })
}

/// Crops to the ROI (error when it does not fit).
pub fn crop(img: DynamicImage, roi: Option<&RoiConfig>) -> Result<DynamicImage, Skip> {
    let Some(r) = roi else { return Ok(img) };
    let (w, h) = (img.width(), img.height());
    if r.x_px as u64 + r.width_px as u64 > w as u64 || r.y_px as u64 + r.height_px as u64 > h as u64
    {
        return Err(Skip::Roi(format!(
            "ROI {}x{} at ({}, {}) does not fit in the {w}x{h} frame",
            r.width_px, r.height_px, r.x_px, r.y_px
        )));
    }
    if (r.x_px, r.y_px, r.width_px, r.height_px) == (0, 0, w, h) {
        return Ok(img);
    }
    Ok(img.crop_imm(r.x_px, r.y_px, r.width_px, r.height_px))
}

/// The 8-bit planar input scaled for the network: `[1, D, R, C]`.
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

/// The whole CPU preparation (see the module docs).
pub fn prepare(data: &FrameData, spec: &PrepSpec) -> Result<Prepared, Skip> {
    let img = to_image(data, spec.channels)?;
    let img = crop(img, spec.roi.as_ref())?;
    let planar = planar_from_dynamic(img, spec.channels, spec.rows, spec.cols);
    let scaled = scale(&planar, &spec.scaling)
        .map_err(|e| Skip::Corrupt(format!("cannot build the input tensor: {e}")))?;
    Ok(Prepared { planar, scaled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ch: usize, roi: Option<RoiConfig>) -> PrepSpec {
        PrepSpec {
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
        let roi = RoiConfig {
            x_px: 4,
            y_px: 0,
            width_px: 4,
            height_px: 4,
        };
        let p = prepare(&data, &spec(1, Some(roi))).unwrap();
        assert!(p.planar.data.iter().all(|&b| b == 200));
        let v = p.scaled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| (x - (1.0 - 200.0 / 255.0)).abs() < 1e-6));
        let too_big = RoiConfig { x_px: 5, ..roi };
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
        let p = prepare(&yuyv, &spec(1, None)).unwrap();
        assert!(p.planar.data.iter().all(|&b| b == 77));
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
}
