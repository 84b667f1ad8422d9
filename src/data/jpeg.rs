//! JPEG, whole images only.
//!
//! A JPEG cut short (a torn MJPEG frame, a file copied in half) must never
//! get a decision: [`decode_jpeg`], the one JPEG decoder of files, replay and
//! MJPEG cameras, refuses it. The `image` crate decodes JPEG with zune-jpeg in
//! its lenient mode, which fills whatever is missing (grey, or zeros read as
//! scan data) and reports success. zune-jpeg's strict mode
//! (`DecoderOptions::set_strict_mode`) turns the decoder's own complaints
//! into errors: running out of data mid-scan ("Premature end of buffer",
//! exhausted data), undecodable Huffman codes, unexpected markers inside or
//! between scans or at a restart boundary, junk of more than a few bytes
//! between header segments, a frame whose component count does not fit its
//! colour space. It still accepts everything a camera or an encoder
//! legitimately writes: baseline and progressive, restart markers, grey,
//! 4:2:0/4:2:2/4:4:4, MJPEG frames without Huffman tables, bytes after EOI.
//! But strict mode alone is not enough (tried on baseline, progressive,
//! restart-marker and grey files cut at every offset):
//!
//! * it never asks for the end-of-image marker (EOI): a file cut anywhere in
//!   its last bytes of scan data, or cut and then zero-padded (the zeros are
//!   read as scan data), decodes;
//! * once the scan data meets a marker (a cut with EOI appended: a torn
//!   frame whose camera still closed it) it feeds zero bits for the rest, and
//!   zero bits are valid codes in the standard Huffman tables, so the rest of
//!   the image is invented and the decode succeeds;
//! * a progressive file that stops early, at a scan boundary, is a valid
//!   decode of fewer scans.
//!
//! So one strict decode, of a buffer prepared by a walk over the markers
//! ([`jpeg_layout`]; no entropy decoding, no second decode):
//!
//! 1. The structure must be whole: SOI, header segments that fit in the data,
//!    a frame header, scans whose data ends at a marker, and EOI after the
//!    last scan. Whatever follows EOI (camera padding, a trailer) is ignored.
//! 2. Every coefficient of every component must be coded down to its last
//!    bit by some scan (a sequential scan codes its components whole; a
//!    progressive one codes its spectral band, finally at `Al = 0`). libjpeg
//!    refuses to write a progressive script that leaves anything out, so this
//!    only refuses files with scans missing.
//! 3. Right after the last scan's data the decoder is given 16 bytes of
//!    1-bits (stuffed `FF 00`), then the rest up to EOI. Whole scan data ends
//!    before them (an encoder pads its last byte with 1-bits, so they only
//!    extend that padding). Data that ends early makes the decoder read them
//!    as codes, and no valid JPEG Huffman table has an all-1s code (the
//!    standard reserves it), so the strict decode fails instead of inventing
//!    the rest from zero bits.
//!
//! What this cannot see: a cut that removes only the last byte of scan data
//! when its bits happen to match the 1-bits (the last block may differ by a
//! coefficient), and, in a progressive file, a cut inside the raw correction
//! bits of the final refinement scan (those bits are not Huffman-coded; the
//! damage is limited to least-significant refinement bits). Frames without
//! Huffman tables (many UVC cameras) get the AVI1 marker that makes the
//! decoder use the standard tables.

use image::{DynamicImage, GrayImage, ImageBuffer, RgbImage};

use super::image_io::MAX_DECODED_BYTES;

/// The APP0 "AVI1" segment that marks a JPEG as an MJPEG frame, which tells
/// the decoder to use the standard Huffman tables of the MJPEG convention.
const AVI1_APP0: [u8; 10] = [0xFF, 0xE0, 0x00, 0x08, b'A', b'V', b'I', b'1', 0x00, 0x00];

/// Stuffed `FF 00` pairs (a byte of 1-bits each) put right after the last
/// scan's data (see the module docs): enough for any code plus its extra
/// bits to start inside them and still see 16 1-bits.
const ONES_AFTER_SCAN: usize = 16;

/// Where a whole JPEG's parts lie (see [`jpeg_layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegLayout {
    /// Where the marker that ends the last scan's data starts (with its
    /// `FF` fill bytes).
    pub last_scan_end: usize,
    /// Just past the end-of-image marker; what follows is not the image's.
    pub end: usize,
    /// Huffman tables (DHT), or the AVI1 marker, before the first scan.
    pub has_tables: bool,
}

/// The next marker at or after `i`: where it starts (its first `FF` fill
/// byte), where its last `FF` is, and the marker byte.
fn next_marker(b: &[u8], mut i: usize) -> Option<(usize, usize, u8)> {
    while i < b.len() && b[i] != 0xFF {
        i += 1;
    }
    let start = i;
    while i < b.len() && b[i] == 0xFF {
        i += 1;
    }
    (i < b.len()).then(|| (start, i - 1, b[i]))
}

/// Walks a JPEG's markers from SOI to EOI, reading no scan data: the
/// structure must be whole and every coefficient coded (module docs, points
/// 1 and 2).
pub fn jpeg_layout(b: &[u8]) -> std::result::Result<JpegLayout, String> {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("no JPEG start marker".into());
    }
    let mut walk = Walk::default();
    let mut i = 2;
    loop {
        let Some((_, ff, m)) = next_marker(b, i) else {
            return Err(if walk.scans == 0 {
                "truncated JPEG: it ends before its image data".into()
            } else {
                "truncated JPEG: no end-of-image marker after the last scan".into()
            });
        };
        i = match m {
            0xD9 => return walk.end(ff + 2),
            // Markers without a segment: TEM, RSTn, SOI.
            0x01 | 0xD0..=0xD8 => ff + 2,
            _ => {
                let (seg, next) = segment(b, ff)?;
                match m {
                    // Frame headers: SOF0..SOF15 less DHT (C4), JPG (C8), DAC (CC).
                    0xC0..=0xCF if !matches!(m, 0xC4 | 0xC8 | 0xCC) => walk.frame(m, seg)?,
                    0xC4 if walk.scans == 0 => walk.has_tables = true,
                    0xE0 if walk.scans == 0 && seg.starts_with(b"AVI1") => walk.has_tables = true,
                    0xDA => {
                        walk.scan(seg)?;
                        // The walk goes on at the marker that ends the scan data.
                        walk.last_scan_end = scan_data_end(b, next)?;
                        i = walk.last_scan_end;
                        continue;
                    }
                    _ => {}
                }
                next
            }
        };
    }
}

/// What the walk over a JPEG's markers has seen so far.
#[derive(Default)]
struct Walk {
    /// Per component of the frame: its id, and which of its 64
    /// coefficients a scan has coded to the last bit.
    components: Vec<(u8, [bool; 64])>,
    frame: bool,
    progressive: bool,
    scans: usize,
    has_tables: bool,
    last_scan_end: usize,
}

impl Walk {
    /// A frame header (SOFn): the components, and whether it is progressive.
    fn frame(&mut self, m: u8, seg: &[u8]) -> std::result::Result<(), String> {
        if self.frame {
            return Err("JPEG with a second frame header".into());
        }
        self.frame = true;
        self.progressive = matches!(m, 0xC2 | 0xC6 | 0xCA | 0xCE);
        let n = seg.get(5).map_or(0, |&n| n as usize);
        if n == 0 || seg.len() < 6 + 3 * n {
            return Err("bad JPEG frame header".into());
        }
        self.components = (0..n).map(|c| (seg[6 + 3 * c], [false; 64])).collect();
        Ok(())
    }

    /// A scan header (SOS): which coefficients of which components it codes
    /// to their last bit.
    fn scan(&mut self, seg: &[u8]) -> std::result::Result<(), String> {
        if !self.frame {
            return Err("JPEG scan before its frame header".into());
        }
        let n = seg.first().map_or(0, |&n| n as usize);
        if n == 0 || seg.len() < 4 + 2 * n {
            return Err("bad JPEG scan header".into());
        }
        let (ss, se, al) = (seg[1 + 2 * n], seg[2 + 2 * n], seg[3 + 2 * n] & 15);
        if ss > se || se > 63 {
            return Err("bad JPEG scan header (spectral band)".into());
        }
        for c in 0..n {
            let id = seg[1 + 2 * c];
            let Some((_, done)) = self.components.iter_mut().find(|(cid, _)| *cid == id) else {
                return Err(format!(
                    "JPEG scan of a component ({id}) the frame does not have"
                ));
            };
            if !self.progressive {
                // A sequential scan codes its components whole,
                // whatever Ss/Se/Al say (some encoders write junk).
                *done = [true; 64];
            } else if al == 0 {
                for d in &mut done[ss as usize..=se as usize] {
                    *d = true;
                }
            }
        }
        self.scans += 1;
        Ok(())
    }

    /// At EOI (`end` just past it): every coefficient must have been coded.
    fn end(self, end: usize) -> std::result::Result<JpegLayout, String> {
        if self.scans == 0 {
            return Err("JPEG without image data (no scan before its end marker)".into());
        }
        for (id, done) in &self.components {
            if let Some(k) = done.iter().position(|d| !d) {
                return Err(if self.progressive {
                    format!("incomplete progressive JPEG: coefficient {k} of component {id} is never fully coded (scans are missing)")
                } else {
                    format!("incomplete JPEG: component {id} is in no scan")
                });
            }
        }
        Ok(JpegLayout {
            last_scan_end: self.last_scan_end,
            end,
            has_tables: self.has_tables,
        })
    }
}

/// The header segment of the marker whose last `FF` is at `ff`: its body,
/// and where the next marker may start.
fn segment(b: &[u8], ff: usize) -> std::result::Result<(&[u8], usize), String> {
    let truncated = || "truncated JPEG: it ends inside a header segment".to_string();
    if ff + 4 > b.len() {
        return Err(truncated());
    }
    let len = u16::from_be_bytes([b[ff + 2], b[ff + 3]]) as usize;
    let next = ff + 2 + len;
    if len < 2 || next > b.len() {
        return Err(truncated());
    }
    Ok((&b[ff + 4..next], next))
}

/// Where scan data starting at `from` ends: the first marker that is
/// neither a stuffed byte (`FF 00`) nor a restart (RSTn).
fn scan_data_end(b: &[u8], from: usize) -> std::result::Result<usize, String> {
    let mut j = from;
    loop {
        let Some((s, f, mk)) = next_marker(b, j) else {
            return Err("truncated JPEG: its scan data has no end-of-image marker after it".into());
        };
        if mk == 0x00 || (0xD0..=0xD7).contains(&mk) {
            j = f + 2;
            continue;
        }
        return Ok(s);
    }
}

/// Decodes a JPEG that must be whole (see the module docs): one strict
/// zune-jpeg decode. Grey stays grey; every other colour space becomes RGB,
/// as the `image` crate does it.
pub fn decode_jpeg(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;

    let layout = jpeg_layout(bytes)?;
    let mut input = Vec::with_capacity(layout.end + AVI1_APP0.len() + 2 * ONES_AFTER_SCAN);
    input.extend_from_slice(&bytes[..2]);
    if !layout.has_tables {
        input.extend_from_slice(&AVI1_APP0);
    }
    input.extend_from_slice(&bytes[2..layout.last_scan_end]);
    for _ in 0..ONES_AFTER_SCAN {
        input.extend_from_slice(&[0xFF, 0x00]);
    }
    input.extend_from_slice(&bytes[layout.last_scan_end..layout.end]);

    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(&input[..]), options);
    dec.decode_headers()
        .map_err(|e| format!("bad JPEG headers: {e}"))?;
    let (Some((w, h)), Some(colour)) = (dec.dimensions(), dec.input_colorspace()) else {
        return Err("bad JPEG headers".into());
    };
    let out = match colour {
        ColorSpace::Luma | ColorSpace::LumaA | ColorSpace::RGB | ColorSpace::RGBA => colour,
        _ => ColorSpace::RGB,
    };
    if (w * h * out.num_components()) as u64 > MAX_DECODED_BYTES {
        return Err(format!("JPEG of {w}x{h} pixels: too large to decode"));
    }
    dec.set_options(dec.options().jpeg_set_out_colorspace(out));
    let px = dec
        .decode()
        .map_err(|e| format!("corrupt or incomplete JPEG scan data: {e}"))?;
    let (w, h) = (w as u32, h as u32);
    let img = match out {
        ColorSpace::Luma => GrayImage::from_raw(w, h, px).map(DynamicImage::ImageLuma8),
        ColorSpace::LumaA => ImageBuffer::from_raw(w, h, px).map(DynamicImage::ImageLumaA8),
        ColorSpace::RGBA => ImageBuffer::from_raw(w, h, px).map(DynamicImage::ImageRgba8),
        _ => RgbImage::from_raw(w, h, px).map(DynamicImage::ImageRgb8),
    };
    img.ok_or_else(|| "JPEG decoder returned a short image".into())
}

/// JPEGs for the tests, whole and cut the ways a torn camera frame or a file
/// copied in half arrives.
#[cfg(test)]
pub(crate) mod test_jpegs {
    use image::DynamicImage;

    /// A scene with detail everywhere (so every part of the scan data matters).
    pub fn scene(w: u32, h: u32, grey: bool) -> DynamicImage {
        let rgb = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 + y * 3) as u8,
                ((x * y) % 251) as u8,
                ((x ^ y) * 13) as u8,
            ])
        });
        let img = DynamicImage::ImageRgb8(rgb);
        if grey {
            DynamicImage::ImageLuma8(img.to_luma8())
        } else {
            img
        }
    }

    /// The `image` crate's JPEG encoding (baseline) of `img`.
    pub fn encode(img: &DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// Just past the last start-of-scan header: where the last scan's data begins.
    pub fn last_scan_data(j: &[u8]) -> usize {
        let at = j
            .windows(2)
            .rposition(|w| w == [0xFF, 0xDA])
            .expect("a scan");
        at + 2 + u16::from_be_bytes([j[at + 2], j[at + 3]]) as usize
    }

    /// `j` with the zero padding cameras leave after a frame.
    pub fn zero_padded(j: &[u8]) -> Vec<u8> {
        [j, &[0u8; 1000][..]].concat()
    }

    /// `j` (a whole JPEG ending in its EOI marker) cut in the ways that must
    /// all be refused.
    pub fn cuts(j: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        let n = j.len();
        assert_eq!(j[n - 2..], [0xFF, 0xD9], "a JPEG ending in EOI");
        let scan = last_scan_data(j);
        let mid = scan + (n - 2 - scan) / 2;
        let eoi = [0xFF, 0xD9];
        vec![
            ("cut right after the scan header", j[..scan].to_vec()),
            ("cut in the middle of the scan", j[..mid].to_vec()),
            (
                "cut just before the end-of-image marker",
                j[..n - 2].to_vec(),
            ),
            ("cut inside the end-of-image marker", j[..n - 1].to_vec()),
            (
                "cut mid-scan, end-of-image marker appended",
                [&j[..mid], &eoi[..]].concat(),
            ),
            (
                "cut a quarter into the scan, end-of-image marker appended",
                [&j[..scan + (n - 2 - scan) / 4], &eoi[..]].concat(),
            ),
            ("cut mid-scan, zero padding after", zero_padded(&j[..mid])),
            (
                "cut before the end-of-image marker, zero padding after",
                zero_padded(&j[..n - 2]),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_finds_the_tables_the_scan_and_the_end() {
        use super::test_jpegs::{encode, last_scan_data, scene, zero_padded};
        let j = encode(&scene(16, 16, false));
        let n = j.len();
        let l = jpeg_layout(&zero_padded(&j)).unwrap();
        assert_eq!((l.last_scan_end, l.end, l.has_tables), (n - 2, n, true));
        // Without its DHT segments; then with the AVI1 marker that stands for them.
        let mut bare = j[..2].to_vec();
        let mut i = 2;
        while j[i + 1] != 0xDA {
            let len = u16::from_be_bytes([j[i + 2], j[i + 3]]) as usize;
            if j[i + 1] != 0xC4 {
                bare.extend_from_slice(&j[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        bare.extend_from_slice(&j[i..]);
        assert!(!jpeg_layout(&bare).unwrap().has_tables);
        let marked = [&bare[..2], &AVI1_APP0[..], &bare[2..]].concat();
        assert!(jpeg_layout(&marked).unwrap().has_tables);
        assert_eq!(decode_jpeg(&marked).unwrap(), decode_jpeg(&j).unwrap());
        // Restart markers and stuffed bytes inside the scan data are not its end.
        let rst = include_bytes!("../../tests/data/jpeg/restart.jpg");
        let l = jpeg_layout(rst).unwrap();
        assert!(rst[last_scan_data(rst)..l.last_scan_end]
            .windows(2)
            .any(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1])));
        assert_eq!(l.end, rst.len());
    }

    #[test]
    fn a_progressive_jpeg_without_its_last_scans_is_incomplete() {
        // Cut at a scan boundary and closed with EOI: structurally fine, and
        // what the scans present decode to is a valid (blurrier) image.
        let j = include_bytes!("../../tests/data/jpeg/progressive.jpg");
        let last_sos = j.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let fewer = [&j[..last_sos], &[0xFF, 0xD9][..]].concat();
        let e = decode_jpeg(&fewer).unwrap_err();
        assert!(e.contains("scans are missing"), "{e}");
        assert!(
            image::load_from_memory(&fewer).is_ok(),
            "lenient decoders take it"
        );
    }
}
