//! Reading images into model input and writing PNGs.
//!
//! Channels are never converted silently: a colour image given to a grey model
//! (or the reverse) is an error that names the file, because on an inspection
//! line that usually means the wrong camera or the wrong model.
//!
//! Formats: PNG, JPEG, BMP and TIFF ([`is_image_name`]), all through
//! [`decode_bytes`]. A BMP whose palette is all grey (how grey BMPs are
//! stored) decodes as grey, as a grey PNG or TIFF does.

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

/// A byte as the network takes it: `b / 255` in f32, in [0, 1]. Every path
/// from 8-bit pixels to the network (files, frames, training batches) goes
/// through this one division, so every path gives the same bits.
#[inline]
pub fn unit(b: u8) -> f32 {
    b as f32 / 255.0
}

impl Planar {
    /// Values in [0, 1] as a `[1, D, R, C]` tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self.data.iter().copied().map(unit).collect();
        Ok(Tensor::from_vec(
            v,
            (1, self.channels, self.rows, self.cols),
            device,
        )?)
    }

    /// Values in [0, 1], channel-major.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().copied().map(unit).collect()
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
    let bytes = std::fs::read(path).map_err(|e| Error::unreadable_input(path, e))?;
    decode_bytes(&bytes).map_err(|e| Error::data(path, format!("cannot decode image: {e}")))
}

/// Decodes an image file's bytes (the format from its content): JPEG through
/// [`decode_jpeg`], grey-palette BMP as grey, the rest through `image`.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => super::jpeg::decode_jpeg(bytes),
        Ok(image::ImageFormat::Bmp) => decode_bmp(bytes),
        _ => image::load_from_memory(bytes).map_err(|e| e.to_string()),
    }
}

/// The most memory a decoded image may take (the `image` crate's default limit).
pub(super) const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// A BMP; one with a palette of greys only (how grey BMPs are written)
/// becomes a grey image, where `image` would give RGB.
fn decode_bmp(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    use image::codecs::bmp::BmpDecoder;
    use image::ImageDecoder;
    let mut dec = BmpDecoder::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let greys: Option<Vec<u8>> = dec.get_palette().and_then(|pal| {
        pal.iter()
            .all(|c| c[0] == c[1] && c[1] == c[2])
            .then(|| pal.iter().map(|c| c[0]).collect())
    });
    let Some(greys) = greys else {
        return image::load_from_memory(bytes).map_err(|e| e.to_string());
    };
    // The palette indices, then their grey levels.
    dec.set_indexed_color(true);
    if dec.total_bytes() > MAX_DECODED_BYTES {
        return Err("BMP too large to decode".into());
    }
    let (w, h) = dec.dimensions();
    let mut px = vec![0u8; dec.total_bytes() as usize];
    dec.read_image(&mut px).map_err(|e| e.to_string())?;
    for p in &mut px {
        *p = greys.get(*p as usize).copied().unwrap_or(0);
    }
    GrayImage::from_raw(w, h, px)
        .map(DynamicImage::ImageLuma8)
        .ok_or_else(|| "BMP decoder returned a short image".into())
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
    check_decoded(path, &img, channels, rows, cols, resize)?;
    Ok(planar_from_dynamic(img, channels, rows, cols))
}

/// Refuses, naming `path`, an image whose channels are not `channels` or,
/// unless `resize`, whose size is not `rows x cols`.
pub fn check_decoded(
    path: &Path,
    img: &DynamicImage,
    channels: usize,
    rows: usize,
    cols: usize,
    resize: bool,
) -> Result<()> {
    let have = channels_of(img);
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
    Ok(())
}

/// The image as 8-bit grey (`channels` 1) or 8-bit RGB (3): the one place
/// where colour is converted for the model. Grey from colour is the `image`
/// crate's luma (docs/model-format.md gives its coefficients); 16-bit
/// samples are reduced to 8 bits and alpha is dropped.
pub fn with_channels(img: DynamicImage, channels: usize) -> DynamicImage {
    if channels == 1 {
        DynamicImage::ImageLuma8(img.to_luma8())
    } else {
        DynamicImage::ImageRgb8(img.to_rgb8())
    }
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
        resize(with_channels(img, 1)).to_luma8().into_raw()
    } else {
        let rgb = resize(with_channels(img, 3)).to_rgb8();
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
        v.extend(im.data.iter().copied().map(unit));
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

    #[test]
    fn cut_jpegs_are_refused_naming_the_file_and_whole_ones_load() {
        use crate::data::jpeg::test_jpegs::{cuts, encode, scene, zero_padded};
        let dir = tempfile::tempdir().unwrap();
        let mut wrong = Vec::new();
        for (grey, ch) in [(true, 1), (false, 3)] {
            let j = encode(&scene(40, 24, grey));
            let whole = dir.path().join("whole.jpg");
            std::fs::write(&whole, &j).unwrap();
            let want = load_planar(&whole, ch, 24, 40, false).unwrap();
            let padded = dir.path().join("padded.jpg");
            std::fs::write(&padded, zero_padded(&j)).unwrap();
            assert_eq!(load_planar(&padded, ch, 24, 40, false).unwrap(), want);
            for (i, (what, bytes)) in cuts(&j).into_iter().enumerate() {
                let p = dir.path().join(format!("cut_{i}.jpg"));
                std::fs::write(&p, bytes).unwrap();
                let e = match load_planar(&p, ch, 24, 40, false) {
                    Err(e) => e,
                    Ok(_) => {
                        wrong.push(format!("{ch} channel(s), {what}: loaded as if whole"));
                        continue;
                    }
                };
                let m = e.to_string();
                assert!(
                    m.contains(&format!("cut_{i}.jpg")) && m.contains("cannot decode"),
                    "{what}: {m}"
                );
                assert_eq!(e.exit_code(), crate::error::exit::DATA, "{what}");
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn every_listed_format_loads_with_the_pngs_pixels() {
        use crate::data::jpeg::test_jpegs::scene;
        let dir = tempfile::tempdir().unwrap();
        for (grey, ch) in [(true, 1), (false, 3)] {
            let img = scene(24, 16, grey);
            let png = dir.path().join("scene.png");
            img.save(&png).unwrap();
            let want = load_planar(&png, ch, 16, 24, false).unwrap();
            for ext in ["jpg", "jpeg", "JPG", "bmp", "tif", "tiff", "TIFF"] {
                let p = dir.path().join(format!("scene.{ext}"));
                assert!(is_image_name(&p), "{ext}");
                img.save_with_format(&p, image::ImageFormat::from_extension(ext).unwrap())
                    .unwrap();
                let got = load_planar(&p, ch, 16, 24, false)
                    .unwrap_or_else(|e| panic!("{ext}, {ch} channel(s): {e}"));
                if ext.to_lowercase().starts_with("jp") {
                    let diff: u32 = (got.data.iter().zip(&want.data))
                        .map(|(a, b)| a.abs_diff(*b) as u32)
                        .sum();
                    let mean = diff as f64 / want.data.len() as f64;
                    assert!(mean < 12.0, "{ext}: mean difference {mean}");
                } else {
                    assert_eq!(got, want, "{ext}, {ch} channel(s)");
                }
            }
        }
    }

    #[test]
    fn a_grey_palette_bmp_is_grey_a_colour_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grey.bmp");
        // A palette with its greys in reverse order: the levels, not the indices.
        let px: Vec<u8> = (0..12).map(|i| i * 20).collect();
        let palette: Vec<[u8; 3]> = (0..=255u8).map(|i| [255 - i; 3]).collect();
        let mut f = std::fs::File::create(&p).unwrap();
        image::codecs::bmp::BmpEncoder::new(&mut f)
            .encode_with_palette(&px, 4, 3, image::ExtendedColorType::L8, Some(&palette))
            .unwrap();
        let im = load_planar(&p, 1, 3, 4, false).unwrap();
        assert_eq!(im.data, px.iter().map(|v| 255 - v).collect::<Vec<_>>());
        // One colour in the palette: a colour image.
        let mut palette = palette;
        palette[7] = [1, 2, 3];
        let mut f = std::fs::File::create(&p).unwrap();
        image::codecs::bmp::BmpEncoder::new(&mut f)
            .encode_with_palette(&px, 4, 3, image::ExtendedColorType::L8, Some(&palette))
            .unwrap();
        let m = load_planar(&p, 1, 3, 4, false).unwrap_err().to_string();
        assert!(m.contains("grey.bmp") && m.contains("RGB"), "{m}");
        assert_eq!(load_planar(&p, 3, 3, 4, false).unwrap().channels, 3);
    }
}
