//! Camera pixel formats to images: YUYV, NV12, RGB3, MJPEG and GREY buffers
//! as V4L2 and GStreamer deliver them (rows may be padded to `bytes_per_line`).
//!
//! The colour step of the preprocessing contract on the CPU (the reference;
//! [`super`] documents each format's conversion). Grey is never widened to
//! colour (a grey camera on a colour model is refused when the daemon starts).

use image::{DynamicImage, GrayImage, RgbImage};

use super::{Bayer, BayerDepth};

/// Why a frame could not be converted; the frame is skipped and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvertError {
    /// The buffer holds fewer bytes than the format and size need.
    Short { have: usize, need: usize },
    /// An MJPEG frame that does not decode (torn, truncated, garbage).
    CorruptJpeg(String),
    /// A decoded frame whose size is not the size asked of the camera.
    WrongSize { width: u32, height: u32 },
    /// A frame of no pixels (a driver that reports a zero width or height).
    Empty { width: u32, height: u32 },
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Short { have, need } => {
                write!(f, "buffer holds {have} bytes, the format needs {need}")
            }
            ConvertError::CorruptJpeg(m) => write!(f, "corrupt MJPEG frame: {m}"),
            ConvertError::WrongSize { width, height } => {
                write!(
                    f,
                    "frame decodes to {width}x{height}, not the size asked for"
                )
            }
            ConvertError::Empty { width, height } => {
                write!(f, "frame of {width}x{height} pixels: it has none")
            }
        }
    }
}

/// A camera buffer: `height` rows of `width` pixels, `bytes_per_line` apart
/// (0 when the driver says the rows are packed).
#[derive(Clone, Copy, Debug)]
pub struct Buffer<'a> {
    pub bytes: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub bytes_per_line: usize,
}

impl<'a> Buffer<'a> {
    /// The `height` rows, each `packed` bytes long, `bytes_per_line` apart
    /// (the packed length when the driver says 0); a buffer too short for
    /// them is refused.
    fn rows(&self, packed: usize) -> Result<impl Iterator<Item = &'a [u8]>, ConvertError> {
        if self.width == 0 || self.height == 0 {
            return Err(ConvertError::Empty {
                width: self.width,
                height: self.height,
            });
        }
        let bytes = self.bytes;
        let h = self.height as usize;
        let s = self.bytes_per_line.max(packed);
        // A size no buffer can hold (a driver's nonsense width, height or
        // stride) overflows: it is short of usize::MAX bytes.
        let need = s
            .checked_mul(h - 1)
            .and_then(|n| n.checked_add(packed))
            .unwrap_or(usize::MAX);
        if bytes.len() < need {
            return Err(ConvertError::Short {
                have: bytes.len(),
                need,
            });
        }
        Ok((0..h).map(move |r| &bytes[r * s..r * s + packed]))
    }

    /// Every `step`-th byte of rows of `step * width` bytes, as grey.
    fn every(&self, step: usize) -> Result<GrayImage, ConvertError> {
        let out: Vec<u8> = self
            .rows(step * self.width as usize)?
            .flat_map(|row| row.iter().step_by(step).copied())
            .collect();
        Ok(GrayImage::from_raw(self.width, self.height, out).expect("sized"))
    }
}

/// 8-bit grey.
pub fn grey(buf: Buffer) -> Result<GrayImage, ConvertError> {
    buf.every(1)
}

/// YUYV to grey: the luma of [`yuyv_to_rgb`] (full range, as a grey model
/// trained on PNGs sees it; the camera's own Y is limited range).
pub fn yuyv_to_luma(buf: Buffer) -> Result<GrayImage, ConvertError> {
    Ok(DynamicImage::ImageRgb8(yuyv_to_rgb(buf)?).to_luma8())
}

/// The grey value of an 8-bit RGB pixel: the `image` crate's `to_luma8` for
/// sRGB, in f32 in exactly this order (no fused multiply-add), with `q =
/// 1/255` as an f32: `Y = round(255 * (((R q) 0.21264784 + (G q)
/// 0.715179205) + (B q) 0.072173037))`, clamped to 0..255. The GPU backend
/// computes the same (`kernels/preprocess.cu`).
pub fn luma(rgb: [u8; 3]) -> u8 {
    const Q: f32 = 1.0 / 255.0;
    let [r, g, b] = rgb.map(|v| v as f32 * Q);
    let y = r * 0.212_647_84 + g * 0.715_179_2 + b * 0.072_173_04;
    (255.0 * y).round().clamp(0.0, 255.0) as u8
}

/// 8-bit R, G, B.
pub fn rgb24(buf: Buffer) -> Result<RgbImage, ConvertError> {
    let out: Vec<u8> = buf
        .rows(3 * buf.width as usize)?
        .flatten()
        .copied()
        .collect();
    Ok(RgbImage::from_raw(buf.width, buf.height, out).expect("sized"))
}

/// One YUV sample (BT.601, limited range, as UVC cameras send) to RGB.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16).max(0);
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(298 * c + 409 * e),
        clamp(298 * c - 100 * d - 208 * e),
        clamp(298 * c + 516 * d),
    ]
}

/// YUYV to RGB (BT.601, limited range); the two pixels of a pair share U and V.
pub fn yuyv_to_rgb(buf: Buffer) -> Result<RgbImage, ConvertError> {
    let w = buf.width as usize;
    // The rows first: the buffer must hold them before anything is sized
    // from the frame's width and height.
    let rows = buf.rows(2 * w)?;
    let mut out = Vec::with_capacity(3 * w * buf.height as usize);
    for row in rows {
        for (i, px) in row.chunks_exact(2).enumerate() {
            // The pair's chroma sits in the pair's second half of the quad.
            let quad = i / 2 * 4;
            let (u, v) = (row[quad + 1], row.get(quad + 3).copied().unwrap_or(128));
            out.extend_from_slice(&yuv_to_rgb(px[0], u, v));
        }
    }
    Ok(RgbImage::from_raw(buf.width, buf.height, out).expect("sized"))
}

/// NV12 to RGB (BT.601, limited range, as [`yuyv_to_rgb`]): the Y plane's
/// `height` rows, then the chroma plane's `ceil(height / 2)` rows of
/// interleaved U, V, all `bytes_per_line` apart; the four pixels of a 2x2
/// block share their U, V (an odd last column or row has a block of its own).
pub fn nv12_to_rgb(buf: Buffer) -> Result<RgbImage, ConvertError> {
    let (w, h) = (buf.width as usize, buf.height as usize);
    let cw = w.div_ceil(2) * 2;
    let s = buf.bytes_per_line.max(cw);
    let ch = h.div_ceil(2);
    let need = s * (h + ch.max(1) - 1) + cw;
    if buf.bytes.len() < need || w == 0 {
        return Err(ConvertError::Short {
            have: buf.bytes.len(),
            need,
        });
    }
    let (y_plane, uv_plane) = buf.bytes.split_at(s * h);
    let mut out = Vec::with_capacity(3 * w * h);
    for r in 0..h {
        let y_row = &y_plane[r * s..r * s + w];
        let uv_row = &uv_plane[(r / 2) * s..(r / 2) * s + cw];
        for (c, &y) in y_row.iter().enumerate() {
            let k = c / 2 * 2;
            out.extend_from_slice(&yuv_to_rgb(y, uv_row[k], uv_row[k + 1]));
        }
    }
    Ok(RgbImage::from_raw(buf.width, buf.height, out).expect("sized"))
}

/// NV12 to grey: the luma of [`nv12_to_rgb`] (as for YUYV).
pub fn nv12_to_luma(buf: Buffer) -> Result<GrayImage, ConvertError> {
    Ok(DynamicImage::ImageRgb8(nv12_to_rgb(buf)?).to_luma8())
}

/// A Bayer row's samples as 8 bits: the top 8 of each sample's bits
/// (10-bit and 12-bit samples above their range are clamped to it first).
fn bayer_row_8bit(row: &[u8], width: usize, depth: BayerDepth, out: &mut Vec<u8>) {
    match depth {
        BayerDepth::Eight => out.extend_from_slice(&row[..width]),
        BayerDepth::Ten | BayerDepth::Twelve => {
            let (max, shift) = if depth == BayerDepth::Ten {
                (1023, 2)
            } else {
                (4095, 4)
            };
            out.extend(
                row.chunks_exact(2)
                    .take(width)
                    .map(|p| (u16::from_le_bytes([p[0], p[1]]).min(max) >> shift) as u8),
            );
        }
        // RAW10: the first four bytes of each five are the high 8 bits.
        BayerDepth::TenPacked => out.extend(
            row.chunks(5)
                .flat_map(|g| g.iter().take(4).copied())
                .take(width),
        ),
    }
}

/// A Bayer mosaic to RGB, bilinear: each pixel keeps its own colour's
/// sample, and takes each other colour as the rounded mean of that colour's
/// samples in its 3x3 neighbourhood inside the frame (at a red or blue site
/// the four green neighbours and the four diagonal blue or red ones; at a
/// green site the two red and the two blue neighbours, one pair across, one
/// along). Works on the top 8 bits of each sample ([`bayer_row_8bit`]), as a
/// sensor's 8-bit mode would deliver them.
pub fn demosaic(buf: Buffer, bayer: Bayer) -> Result<RgbImage, ConvertError> {
    let (w, h) = (buf.width as usize, buf.height as usize);
    let mut mosaic = Vec::with_capacity(w * h);
    for row in buf.rows(bayer.row_bytes(w))? {
        bayer_row_8bit(row, w, bayer.depth, &mut mosaic);
    }
    let order = bayer.order;
    let mut out = Vec::with_capacity(3 * w * h);
    for r in 0..h {
        for c in 0..w {
            let own = order.channel(r, c);
            let mut sum = [0u32; 3];
            let mut n = [0u32; 3];
            for rr in r.saturating_sub(1)..(r + 2).min(h) {
                for cc in c.saturating_sub(1)..(c + 2).min(w) {
                    let k = order.channel(rr, cc);
                    sum[k] += mosaic[rr * w + cc] as u32;
                    n[k] += 1;
                }
            }
            let v = mosaic[r * w + c];
            for k in 0..3 {
                out.push(if k == own || n[k] == 0 {
                    v
                } else {
                    ((sum[k] + n[k] / 2) / n[k]) as u8
                });
            }
        }
    }
    Ok(RgbImage::from_raw(buf.width, buf.height, out).expect("sized"))
}

/// An MJPEG frame: one whole JPEG image ([`crate::data::jpeg::decode_jpeg`]: a torn
/// frame is corrupt, never filled in), with the standard Huffman tables when
/// the frame carries none; cameras pad the buffer after the end of the image.
pub fn mjpeg(bytes: &[u8], width: u32, height: u32) -> Result<DynamicImage, ConvertError> {
    let img = crate::data::jpeg::decode_jpeg(bytes).map_err(ConvertError::CorruptJpeg)?;
    if (img.width(), img.height()) != (width, height) {
        return Err(ConvertError::WrongSize {
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(bytes: &[u8], width: u32, height: u32, bytes_per_line: usize) -> Buffer<'_> {
        Buffer {
            bytes,
            width,
            height,
            bytes_per_line,
        }
    }

    /// A YUYV buffer as a camera records it, from per-pixel (Y, U, V).
    fn record_yuyv(w: usize, h: usize, pad: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Vec<u8> {
        let mut buf = Vec::new();
        for r in 0..h {
            for c in (0..w).step_by(2) {
                let a = f(r, c);
                let b = f(r, c + 1);
                buf.extend_from_slice(&[a[0], a[1], b[0], a[2]]);
            }
            buf.extend(std::iter::repeat_n(0xEE, pad));
        }
        buf
    }

    #[test]
    fn yuyv_grey_is_the_full_range_luma_and_skips_row_padding() {
        // Neutral chroma: the luma is the expanded Y, (298 (Y - 16) + 128) >> 8.
        let buf = record_yuyv(6, 3, 4, |r, c| [(16 + r * 60 + c * 10) as u8, 128, 128]);
        let g = yuyv_to_luma(buffer(&buf, 6, 3, 16)).unwrap();
        let expand = |y: i32| ((298 * (y - 16) + 128) >> 8).clamp(0, 255) as u8;
        assert_eq!(g.get_pixel(0, 0).0, [0]);
        assert_eq!(g.get_pixel(5, 2).0, [expand(16 + 120 + 50)]);
        assert_eq!(g.get_pixel(3, 1).0, [expand(16 + 60 + 30)]);
        // Colour: the luma of the converted RGB, as to_luma8 of a saved PNG.
        let buf = record_yuyv(2, 1, 0, |_, _| [81, 90, 240]);
        let rgb = yuyv_to_rgb(buffer(&buf, 2, 1, 0)).unwrap();
        let want = luma(rgb.get_pixel(0, 0).0);
        assert_eq!(
            yuyv_to_luma(buffer(&buf, 2, 1, 0))
                .unwrap()
                .get_pixel(1, 0)
                .0,
            [want]
        );
    }

    /// [`luma`] is `to_luma8`, for every 8-bit RGB value.
    #[test]
    fn luma_is_the_image_crates_for_every_colour() {
        let all = RgbImage::from_fn(4096, 4096, |x, y| {
            let i = y * 4096 + x;
            image::Rgb([(i >> 16) as u8, (i >> 8) as u8, i as u8])
        });
        let theirs = DynamicImage::ImageRgb8(all.clone()).to_luma8();
        let wrong = all
            .pixels()
            .zip(theirs.pixels())
            .filter(|(p, l)| luma(p.0) != l.0[0])
            .count();
        assert_eq!(wrong, 0, "colours whose luma differs from to_luma8");
    }

    #[test]
    fn rgb24_honours_the_stride() {
        let buf = [1, 2, 3, 4, 5, 6, 0xEE, 7, 8, 9, 10, 11, 12, 0xEE];
        let img = rgb24(buffer(&buf, 2, 2, 7)).unwrap();
        assert_eq!(img.into_raw(), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(rgb24(buffer(&buf[..12], 2, 2, 7)).is_err());
    }

    #[test]
    fn yuyv_colours_are_bt601() {
        // Limited-range white, black and pure red, green, blue (BT.601).
        let samples: [([u8; 3], [u8; 3]); 5] = [
            ([235, 128, 128], [255, 255, 255]),
            ([16, 128, 128], [0, 0, 0]),
            ([81, 90, 240], [255, 0, 0]),
            ([145, 54, 34], [0, 255, 0]),
            ([41, 240, 110], [0, 0, 255]),
        ];
        for (yuv, rgb) in samples {
            let buf = record_yuyv(2, 1, 0, |_, _| yuv);
            let img = yuyv_to_rgb(buffer(&buf, 2, 1, 0)).unwrap();
            for p in img.pixels() {
                for k in 0..3 {
                    assert!(
                        (p.0[k] as i32 - rgb[k] as i32).abs() <= 2,
                        "{yuv:?} -> {:?}, want {rgb:?}",
                        p.0
                    );
                }
            }
        }
    }

    /// An NV12 buffer as a camera records it, from per-pixel (Y, U, V): the
    /// chroma of a 2x2 block is its top-left pixel's; rows padded by `pad`.
    fn record_nv12(w: usize, h: usize, pad: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Vec<u8> {
        let cw = w.div_ceil(2) * 2;
        let stride = cw + pad;
        let mut buf = Vec::new();
        for r in 0..h {
            let start = buf.len();
            buf.extend((0..w).map(|c| f(r, c)[0]));
            buf.resize(start + stride, 0xEE);
        }
        for r in (0..h).step_by(2) {
            let start = buf.len();
            for c in (0..w).step_by(2) {
                let p = f(r, c);
                buf.extend_from_slice(&[p[1], p[2]]);
            }
            buf.resize(start + stride, 0xEE);
        }
        buf
    }

    /// NV12 and YUYV carry the same pixels when the chroma is constant over
    /// each 2x2 block: the two conversions then agree exactly (one BT.601).
    #[test]
    fn nv12_is_the_yuyv_conversion_with_shared_blocks() {
        let (w, h) = (6, 4);
        let px = |r: usize, c: usize| {
            [
                (16 + r * 40 + c * 7) as u8,
                (60 + (r / 2) * 50 + (c / 2) * 20) as u8,
                (200 - (r / 2) * 30 - (c / 2) * 25) as u8,
            ]
        };
        let nv12 = record_nv12(w, h, 2, px);
        let yuyv = record_yuyv(w, h, 0, px);
        let a = nv12_to_rgb(buffer(&nv12, w as u32, h as u32, w + 2)).unwrap();
        let b = yuyv_to_rgb(buffer(&yuyv, w as u32, h as u32, 0)).unwrap();
        assert_eq!(a, b);
        let g = nv12_to_luma(buffer(&nv12, w as u32, h as u32, w + 2)).unwrap();
        assert_eq!(g, DynamicImage::ImageRgb8(a).to_luma8());
        // Known colours: limited-range red and white.
        let red = record_nv12(2, 2, 0, |_, _| [81, 90, 240]);
        let img = nv12_to_rgb(buffer(&red, 2, 2, 0)).unwrap();
        for p in img.pixels() {
            assert!(p.0[0] >= 253 && p.0[1] <= 2 && p.0[2] <= 2, "{:?}", p.0);
        }
    }

    #[test]
    fn nv12_odd_sizes_and_short_buffers() {
        // 3x3: chroma rows of 4 bytes (2 pairs), 2 chroma rows.
        let buf = record_nv12(3, 3, 0, |r, c| [(100 + r * 10 + c) as u8, 128, 128]);
        assert_eq!(buf.len(), 4 * 3 + 4 * 2);
        let g = nv12_to_rgb(buffer(&buf, 3, 3, 4)).unwrap();
        let expand = |y: i32| ((298 * (y - 16) + 128) >> 8).clamp(0, 255) as u8;
        assert_eq!(g.get_pixel(2, 2).0, [expand(122); 3]);
        let e = nv12_to_rgb(buffer(&buf[..buf.len() - 1], 3, 3, 4)).unwrap_err();
        assert_eq!(e, ConvertError::Short { have: 19, need: 20 });
    }

    /// The mosaic a sensor of `bayer` records of `img`, with `noise` in the
    /// sample bits below the top 8 (which the conversion drops).
    fn mosaic(img: &RgbImage, bayer: Bayer, pad: usize, noise: u16) -> Vec<u8> {
        let (w, h) = img.dimensions();
        let mut out = Vec::new();
        for r in 0..h as usize {
            let start = out.len();
            let sample = |c: usize| img.get_pixel(c as u32, r as u32).0[bayer.order.channel(r, c)];
            match bayer.depth {
                BayerDepth::Eight => out.extend((0..w as usize).map(sample)),
                BayerDepth::Ten | BayerDepth::Twelve => {
                    let shift = if bayer.depth == BayerDepth::Ten { 2 } else { 4 };
                    for c in 0..w as usize {
                        let low = (noise + c as u16) % (1 << shift);
                        let v = ((sample(c) as u16) << shift) | low;
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                BayerDepth::TenPacked => {
                    for g in (0..w as usize).step_by(4) {
                        let px: Vec<usize> = (g..g + 4).collect();
                        let mut low = 0u8;
                        for (i, &c) in px.iter().enumerate() {
                            let v = if c < w as usize { sample(c) } else { 0 };
                            out.push(v);
                            low |= (((noise as usize + c) % 4) as u8) << (2 * i);
                        }
                        out.push(low);
                    }
                }
            }
            assert_eq!(out.len() - start, bayer.row_bytes(w as usize));
            out.extend(std::iter::repeat_n(0xEE, pad));
        }
        out
    }

    /// A scene with smooth gradients (which bilinear interpolation
    /// reproduces) and a sharp-edged square (which it blurs by a pixel).
    fn scene(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            if (12..20).contains(&x) && (8..14).contains(&y) {
                image::Rgb([230, 40, 90])
            } else {
                image::Rgb([
                    (20 + 6 * x) as u8,
                    (30 + 8 * y) as u8,
                    (200 - 3 * x - 2 * y) as u8,
                ])
            }
        })
    }

    /// Every Bayer format: a known scene mosaicked, then demosaiced, comes
    /// back exactly inside the smooth regions (bilinear interpolation of a
    /// linear ramp is exact up to rounding: 1 level) and within a mean of 6
    /// levels over the whole frame (the square's edges blur); the same for
    /// every storage of the same mosaic.
    #[test]
    fn demosaicing_a_mosaicked_scene_gives_the_scene_back() {
        let (w, h) = (32u32, 24u32);
        let img = scene(w, h);
        for bayer in Bayer::all() {
            let pad = 3;
            let row = bayer.row_bytes(w as usize) + pad;
            let raw = mosaic(&img, bayer, pad, 1);
            let out = demosaic(buffer(&raw, w, h, row), bayer).unwrap();
            let mut total = 0u64;
            for (x, y, p) in out.enumerate_pixels() {
                let want = img.get_pixel(x, y).0;
                let near_square = (10..22).contains(&x) && (6..16).contains(&y);
                let inside = x > 0 && y > 0 && x < w - 1 && y < h - 1;
                for k in 0..3 {
                    let d = (p.0[k] as i32 - want[k] as i32).unsigned_abs();
                    total += d as u64;
                    if inside && !near_square {
                        assert!(
                            d <= 1,
                            "{}: ({x}, {y}) channel {k}: {:?} vs {want:?}",
                            bayer.name(),
                            p.0
                        );
                    }
                }
            }
            let mean = total as f64 / (3 * w * h) as f64;
            assert!(mean < 6.0, "{}: mean error {mean:.2}", bayer.name());
            let eight = Bayer {
                depth: BayerDepth::Eight,
                ..bayer
            };
            let plain = mosaic(&img, eight, 0, 0);
            assert_eq!(
                out,
                demosaic(buffer(&plain, w, h, 0), eight).unwrap(),
                "{}",
                bayer.name()
            );
        }
    }

    #[test]
    fn bayer_sites_keep_their_own_sample_and_orders_differ() {
        // A flat colour: every order gives it back exactly, everywhere.
        let flat = RgbImage::from_pixel(6, 4, image::Rgb([200, 100, 50]));
        for order in super::super::BayerOrder::ALL {
            let b = Bayer {
                order,
                depth: BayerDepth::Eight,
            };
            let out = demosaic(buffer(&mosaic(&flat, b, 0, 0), 6, 4, 0), b).unwrap();
            assert_eq!(out, flat, "{order:?}");
        }
        // The same bytes read in another order swap red and blue.
        let rggb = Bayer {
            order: super::super::BayerOrder::Rggb,
            depth: BayerDepth::Eight,
        };
        let bggr = Bayer {
            order: super::super::BayerOrder::Bggr,
            depth: BayerDepth::Eight,
        };
        let raw = mosaic(&flat, rggb, 0, 0);
        let swapped = demosaic(buffer(&raw, 6, 4, 0), bggr).unwrap();
        assert_eq!(swapped.get_pixel(2, 2).0, [50, 100, 200]);
        // 10-bit samples above their range are clamped, not wrapped.
        let b10 = Bayer {
            order: super::super::BayerOrder::Rggb,
            depth: BayerDepth::Ten,
        };
        let over = 0xFFFFu16.to_le_bytes().repeat(4);
        let out = demosaic(buffer(&over, 2, 2, 0), b10).unwrap();
        assert!(out.pixels().all(|p| p.0 == [255, 255, 255]));
        assert!(demosaic(buffer(&over[..7], 2, 2, 0), b10).is_err());
    }

    #[test]
    fn yuyv_pairs_share_chroma() {
        // Left pixel of the pair red, right pixel with the same chroma.
        let buf = vec![81, 90, 81, 240, 235, 128, 16, 128];
        let img = yuyv_to_rgb(buffer(&buf, 4, 1, 8)).unwrap();
        assert_eq!(img.get_pixel(0, 0), img.get_pixel(1, 0));
        assert_eq!(img.get_pixel(2, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(3, 0).0, [0, 0, 0]);
    }

    #[test]
    fn short_buffers_are_refused() {
        let e = yuyv_to_luma(buffer(&[0; 10], 4, 2, 0)).unwrap_err();
        assert_eq!(e, ConvertError::Short { have: 10, need: 16 });
        assert!(grey(buffer(&[0; 5], 3, 2, 0)).is_err());
        assert!(yuyv_to_rgb(buffer(&[0; 15], 4, 2, 8)).is_err());
    }

    #[test]
    fn grey_honours_the_stride() {
        let mut buf = Vec::new();
        for r in 0..3u8 {
            buf.extend_from_slice(&[r, r + 1, r + 2, 0xFF, 0xFF]);
        }
        let g = grey(buffer(&buf, 3, 3, 5)).unwrap();
        assert_eq!(g.into_raw(), vec![0, 1, 2, 1, 2, 3, 2, 3, 4]);
    }

    fn recorded_jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 100]));
        let mut out = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn mjpeg_decodes_and_checks_the_size() {
        let j = recorded_jpeg(32, 16);
        let img = mjpeg(&j, 32, 16).unwrap();
        let p = img.to_rgb8().get_pixel(31, 15).0;
        assert!(
            (p[0] as i32 - 248).abs() < 12 && (p[2] as i32 - 100).abs() < 12,
            "{p:?}"
        );
        // Cameras pad the buffer after the end of the image.
        let mut padded = j.clone();
        padded.extend(std::iter::repeat_n(0, 1000));
        assert!(mjpeg(&padded, 32, 16).is_ok());
        assert!(matches!(
            mjpeg(&j, 64, 16),
            Err(ConvertError::WrongSize {
                width: 32,
                height: 16
            })
        ));
    }

    /// `j` without its Huffman tables (DHT segments), as many UVC cameras send.
    fn strip_dht(j: &[u8]) -> Vec<u8> {
        let mut stripped = vec![0xFF, 0xD8];
        let mut i = 2;
        while i + 4 <= j.len() {
            assert_eq!(j[i], 0xFF);
            let marker = j[i + 1];
            if marker == 0xDA {
                stripped.extend_from_slice(&j[i..]);
                break;
            }
            let len = u16::from_be_bytes([j[i + 2], j[i + 3]]) as usize;
            if marker != 0xC4 {
                stripped.extend_from_slice(&j[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        assert!(
            stripped.len() < j.len(),
            "the encoder wrote no DHT to strip"
        );
        stripped
    }

    #[test]
    fn mjpeg_without_huffman_tables_uses_the_defaults() {
        // UVC cameras often omit DHT segments (the MJPEG convention). Our
        // encoder writes the standard tables, so cutting them out leaves a
        // frame that decodes the same with the defaults, with or without the
        // AVI1 marker.
        let j = recorded_jpeg(16, 16);
        let stripped = strip_dht(&j);
        let a = mjpeg(&j, 16, 16).unwrap().to_rgb8();
        let b = mjpeg(&stripped, 16, 16).unwrap().to_rgb8();
        assert_eq!(a, b);
        let mut marked = stripped[..2].to_vec();
        marked.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x08, b'A', b'V', b'I', b'1', 0x00, 0x00]);
        marked.extend_from_slice(&stripped[2..]);
        assert_eq!(mjpeg(&marked, 16, 16).unwrap().to_rgb8(), a);
    }

    /// JPEGs written by libjpeg (through Pillow), of kinds the `image` crate's
    /// encoder does not write: progressive (4:2:0 colour, grey, 4:4:4 with
    /// restart markers) and baseline with a restart marker after every MCU.
    const LIBJPEG_FILES: [(&str, &[u8]); 4] = [
        (
            "progressive",
            include_bytes!("../../tests/data/jpeg/progressive.jpg"),
        ),
        (
            "progressive grey",
            include_bytes!("../../tests/data/jpeg/progressive_grey.jpg"),
        ),
        (
            "progressive 4:4:4 with restarts",
            include_bytes!("../../tests/data/jpeg/progressive_restart_444.jpg"),
        ),
        (
            "baseline with restarts",
            include_bytes!("../../tests/data/jpeg/restart.jpg"),
        ),
    ];

    /// Whole frames of every kind, with their size.
    fn whole_frames() -> Vec<(&'static str, Vec<u8>, u32, u32)> {
        use crate::data::jpeg::test_jpegs::{encode, scene};
        let colour = encode(&scene(48, 32, false));
        let mut v = vec![
            ("image-crate colour", colour.clone(), 48, 32),
            ("image-crate grey", encode(&scene(48, 32, true)), 48, 32),
            ("without Huffman tables", strip_dht(&colour), 48, 32),
        ];
        for (name, bytes) in LIBJPEG_FILES {
            let img = image::load_from_memory(bytes).unwrap();
            v.push((name, bytes.to_vec(), img.width(), img.height()));
        }
        v
    }

    #[test]
    fn whole_frames_decode_as_the_image_crate_decodes_them() {
        use crate::data::jpeg::test_jpegs::zero_padded;
        for (name, j, w, h) in whole_frames() {
            let ours = mjpeg(&j, w, h).unwrap_or_else(|e| panic!("{name}: {e}"));
            if name != "without Huffman tables" {
                let theirs = image::load_from_memory(&j).unwrap();
                assert_eq!(ours, theirs, "{name}");
            }
            assert_eq!(
                mjpeg(&zero_padded(&j), w, h).unwrap(),
                ours,
                "{name} padded"
            );
        }
    }

    #[test]
    fn torn_mjpeg_frames_are_corrupt() {
        use crate::data::jpeg::test_jpegs::cuts;
        let mut wrong = Vec::new();
        for (name, j, w, h) in whole_frames() {
            for (what, bytes) in cuts(&j) {
                match mjpeg(&bytes, w, h) {
                    Err(ConvertError::CorruptJpeg(_)) => {}
                    Err(e) => wrong.push(format!("{name}, {what}: {e}")),
                    Ok(_) => wrong.push(format!("{name}, {what}: decoded")),
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn every_cut_of_a_frame_is_corrupt() {
        use crate::data::jpeg::test_jpegs::zero_padded;
        for (name, j, w, h) in whole_frames() {
            let n = j.len();
            let first_scan = j.windows(2).position(|x| x == [0xFF, 0xDA]).unwrap();
            for k in first_scan..n - 1 {
                for (what, bytes) in [
                    ("cut", j[..k].to_vec()),
                    ("cut and zero-padded", zero_padded(&j[..k])),
                    (
                        "cut with EOI appended",
                        [&j[..k], &[0xFF, 0xD9][..]].concat(),
                    ),
                ] {
                    // With EOI appended, a cut of the scan data's last byte
                    // alone can decode (its bits may be the ones of the
                    // decoder's stand-in): see `image_io`.
                    if k >= n - 3 && what == "cut with EOI appended" {
                        continue;
                    }
                    assert!(
                        mjpeg(&bytes, w, h).is_err(),
                        "{name}: {what} at {k} of {n} bytes"
                    );
                }
            }
        }
    }

    #[test]
    fn corrupt_mjpeg_frames_are_errors_not_panics() {
        let j = recorded_jpeg(32, 32);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("garbage", vec![0x12; 500]),
            ("truncated header", j[..20].to_vec()),
            ("zeroed header", {
                let mut z = j.clone();
                for b in &mut z[2..200.min(j.len())] {
                    *b = 0;
                }
                z
            }),
        ];
        for (what, bytes) in cases {
            match mjpeg(&bytes, 32, 32) {
                Err(ConvertError::CorruptJpeg(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}
