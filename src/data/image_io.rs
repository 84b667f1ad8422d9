//! Reading images into model input and writing PNGs.
//!
//! Channels are never converted silently: a colour image given to a grey model
//! (or the reverse) is an error that names the file, because on an inspection
//! line that usually means the wrong camera or the wrong model.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

use crate::error::{Error, IoContext, Result};

/// An image in planar (CHW) `u8` layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planar {
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
    /// `channels * rows * cols` bytes, channel-major.
    pub data: Vec<u8>,
}

impl Planar {
    /// Values in [0, 1] as a `[1, D, R, C]` tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self.data.iter().map(|&b| b as f32 / 255.0).collect();
        Ok(Tensor::from_vec(
            v,
            (1, self.channels, self.rows, self.cols),
            device,
        )?)
    }

    /// Values in [0, 1], channel-major.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&b| b as f32 / 255.0).collect()
    }
}

/// The channels an image counts as for the model: 1 for grey (8 or 16 bit,
/// with or without alpha), 3 for everything else; alpha is dropped.
pub fn channels_of(img: &DynamicImage) -> usize {
    match img.color() {
        image::ColorType::L8
        | image::ColorType::La8
        | image::ColorType::L16
        | image::ColorType::La16 => 1,
        _ => 3,
    }
}

fn describe(ch: usize) -> &'static str {
    if ch == 1 {
        "grey (1 channel)"
    } else {
        "RGB (3 channels)"
    }
}

/// Decodes an image file, naming it in any error.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).at(path)?;
    image::load_from_memory(&bytes)
        .map_err(|e| Error::data(path, format!("cannot decode image: {e}")))
}

/// Loads `path` as a planar image with `channels` channels, resized to
/// `rows x cols` when `resize` is set; otherwise a different size is an error.
pub fn load_planar(
    path: &Path,
    channels: usize,
    rows: usize,
    cols: usize,
    resize: bool,
) -> Result<Planar> {
    let img = decode(path)?;
    let have = channels_of(&img);
    if have != channels {
        return Err(Error::data(
            path,
            format!(
                "image is {}, the model takes {}",
                describe(have),
                describe(channels)
            ),
        ));
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (h, w) != (rows, cols) && !resize {
        return Err(Error::data(
            path,
            format!("image is {w}x{h} (width x height), the model takes {cols}x{rows}; pass --resize to resize it"),
        ));
    }
    Ok(planar_from_dynamic(img, channels, rows, cols))
}

/// Converts (and if needed resizes with a triangle filter) a decoded image.
pub fn planar_from_dynamic(img: DynamicImage, channels: usize, rows: usize, cols: usize) -> Planar {
    let resize = |i: DynamicImage| {
        if (i.height() as usize, i.width() as usize) == (rows, cols) {
            i
        } else {
            i.resize_exact(
                cols as u32,
                rows as u32,
                image::imageops::FilterType::Triangle,
            )
        }
    };
    let data = if channels == 1 {
        resize(DynamicImage::ImageLuma8(img.to_luma8()))
            .to_luma8()
            .into_raw()
    } else {
        let rgb = resize(DynamicImage::ImageRgb8(img.to_rgb8())).to_rgb8();
        let n = rows * cols;
        let mut out = vec![0u8; 3 * n];
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * n + i] = p.0[c];
            }
        }
        out
    };
    Planar {
        channels,
        rows,
        cols,
        data,
    }
}

/// Stacks images into a `[B, D, R, C]` tensor with values in [0, 1].
pub fn batch_tensor(images: &[&Planar], device: &Device) -> Result<Tensor> {
    let first = images
        .first()
        .ok_or_else(|| Error::Runtime("empty batch".into()))?;
    let (d, r, c) = (first.channels, first.rows, first.cols);
    let mut v = Vec::with_capacity(images.len() * d * r * c);
    for im in images {
        v.extend(im.data.iter().map(|&b| b as f32 / 255.0));
    }
    Ok(Tensor::from_vec(v, (images.len(), d, r, c), device)?)
}

/// Writes an 8-bit grey PNG (row-major values).
pub fn save_grey(path: &Path, cols: usize, rows: usize, data: Vec<u8>) -> Result<()> {
    let img: GrayImage = ImageBuffer::<Luma<u8>, _>::from_raw(cols as u32, rows as u32, data)
        .ok_or_else(|| Error::Runtime(format!("{}: image buffer size mismatch", path.display())))?;
    save_png(path, DynamicImage::ImageLuma8(img))
}

/// Writes an 8-bit RGB PNG (row-major interleaved values).
pub fn save_rgb(path: &Path, cols: usize, rows: usize, data: Vec<u8>) -> Result<()> {
    let img: RgbImage = ImageBuffer::<Rgb<u8>, _>::from_raw(cols as u32, rows as u32, data)
        .ok_or_else(|| Error::Runtime(format!("{}: image buffer size mismatch", path.display())))?;
    save_png(path, DynamicImage::ImageRgb8(img))
}

/// Encodes a PNG in memory.
pub fn encode_png(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::Runtime(format!("PNG encoding failed: {e}")))?;
    Ok(buf.into_inner())
}

fn save_png(path: &Path, img: DynamicImage) -> Result<()> {
    let bytes = encode_png(&img)?;
    std::fs::write(path, bytes).at(path)
}

/// A planar image as a displayable `DynamicImage`.
pub fn planar_to_dynamic(p: &Planar) -> DynamicImage {
    if p.channels == 1 {
        DynamicImage::ImageLuma8(
            GrayImage::from_raw(p.cols as u32, p.rows as u32, p.data.clone()).expect("sized"),
        )
    } else {
        let n = p.rows * p.cols;
        let mut v = Vec::with_capacity(3 * n);
        for i in 0..n {
            for c in 0..3 {
                v.push(p.data[c * n + i]);
            }
        }
        DynamicImage::ImageRgb8(RgbImage::from_raw(p.cols as u32, p.rows as u32, v).expect("sized"))
    }
}

/// Is this a file name the loaders read as an image?
pub fn is_image_name(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("colour.png");
        save_rgb(&p, 4, 4, vec![10; 48]).unwrap();
        let e = load_planar(&p, 1, 4, 4, false).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("colour.png") && m.contains("RGB"), "{m}");
        assert_eq!(e.exit_code(), crate::error::exit::DATA);
    }

    #[test]
    fn size_mismatch_refused_unless_resize() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        save_grey(&p, 6, 4, (0..24).map(|i| i as u8 * 10).collect()).unwrap();
        assert!(load_planar(&p, 1, 8, 8, false)
            .unwrap_err()
            .to_string()
            .contains("--resize"));
        let im = load_planar(&p, 1, 8, 8, true).unwrap();
        assert_eq!((im.rows, im.cols, im.data.len()), (8, 8, 64));
        let exact = load_planar(&p, 1, 4, 6, false).unwrap();
        assert_eq!(exact.data[5], 50);
    }

    #[test]
    fn rgb_is_planar() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        // 2x1 image: pixel0 = (1,2,3), pixel1 = (4,5,6)
        save_rgb(&p, 2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let im = load_planar(&p, 3, 1, 2, false).unwrap();
        assert_eq!(im.data, vec![1, 4, 2, 5, 3, 6]);
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broken.png");
        std::fs::write(&p, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let m = load_planar(&p, 1, 4, 4, false).unwrap_err().to_string();
        assert!(
            m.contains("broken.png") && m.contains("cannot decode"),
            "{m}"
        );
    }
}
