//! `kernels/preprocess.cu` run by the host emulation ([`crate::gpu::emu`])
//! with the launches `cuda_fwd` uses, against the ops' CPU path (whatever
//! its formula): the kernels promise it bit for bit (every float operation
//! the CPU's, in its order), so the comparison is exact.

use candle_core::{CustomOp1, Device, Tensor};
use gcm_cuda_emu::{Arg, Unit};

use super::{pixel_launch, Frame, PixelFormat, PreprocessOp, PreprocessSpec, Roi};
use crate::gpu::emu::run;
use crate::model::InputScaling;
use crate::rng::Rng;

/// The kernel's code of a camera format (as `cuda_fwd` passes it), `None`
/// for formats decoded before preprocessing.
fn code(format: PixelFormat) -> Option<i32> {
    match format {
        PixelFormat::Grey => Some(0),
        PixelFormat::Yuyv => Some(1),
        PixelFormat::Rgb24 => Some(2),
        PixelFormat::Mjpeg | PixelFormat::Nv12 | PixelFormat::Bayer(_) => None,
    }
}

fn cpu(op: &impl CustomOp1, x: &Tensor) -> Tensor {
    x.apply_op1_no_bwd(op).unwrap()
}

/// Both kernels on the bytes `PreprocessOp::new` chose, with the launches
/// `cuda_fwd` uses: the 8-bit planar input and the scaled network input.
fn emulate(op: &PreprocessOp, bytes: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let code = code(op.format).expect("an uncompressed format");
    let (rows, cols, d) = (op.rows, op.cols, op.channels);
    let r = op.roi;
    let i = |v: usize| v as i32;
    let mut out = vec![0xa5u8; d * rows * cols];
    let mut args = [
        Arg::slice(bytes),
        Arg::val(code),
        Arg::val(op.bytes_per_line as u64),
        Arg::val(r.x_px as i32),
        Arg::val(r.y_px as i32),
        Arg::val(r.width_px as i32),
        Arg::val(r.height_px as i32),
        Arg::val(i(rows)),
        Arg::val(i(cols)),
        Arg::val(i(d)),
        Arg::slice_mut(&mut out),
    ];
    // SAFETY: `PreprocessOp::new` checked that `bytes` holds every row of the
    // region; out holds D * rows * cols bytes, one pixel a thread.
    unsafe {
        run(
            Unit::Kernels,
            "gcm_preprocess",
            pixel_launch(rows * cols).unwrap(),
            &mut args,
        )
    };
    let (a, b) = (op.scale.a, op.scale.b);
    let n = out.len();
    let mut scaled = vec![f32::NAN; n];
    let mut args = [
        Arg::slice(&out),
        Arg::val(n as u64),
        Arg::val((rows * cols) as u64),
        Arg::val(a[0]),
        Arg::val(a[1]),
        Arg::val(a[2]),
        Arg::val(b[0]),
        Arg::val(b[1]),
        Arg::val(b[2]),
        Arg::slice_mut(&mut scaled),
    ];
    // SAFETY: out and scaled hold n values, one a thread.
    unsafe {
        run(
            Unit::Kernels,
            "gcm_scale",
            pixel_launch(n).unwrap(),
            &mut args,
        )
    };
    (out, scaled)
}

/// The positions (and the first few values) where two f32 results are not
/// the same bits.
fn bit_mismatches(got: &[f32], want: &[f32]) -> Vec<String> {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
        .map(|(i, (g, w))| format!("[{i}] {g} vs {w}"))
        .take(5)
        .collect()
}

/// Both kernels on one frame and spec, held to the ops on the CPU.
fn check(frame: &Frame, spec: &PreprocessSpec, what: &str) {
    let (op, bytes) = PreprocessOp::new(frame, spec).unwrap();
    let (out, scaled) = emulate(&op, bytes);
    let raw = Tensor::from_slice(bytes, bytes.len(), &Device::Cpu).unwrap();
    let planar = cpu(&op, &raw);
    let want = planar.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(out, want, "gcm_preprocess {what}");
    let want = cpu(&op.scale, &planar)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bad = bit_mismatches(&scaled, &want);
    assert!(bad.is_empty(), "gcm_scale {what}: {bad:?}");
}

/// Every uncompressed format, grey and colour models, padded rows, regions
/// off the origin, down- and upscaling, a 1x1 output and one of the
/// region's own size; output sizes no multiple of the block (256).
#[test]
fn preprocess_kernels_equal_the_cpu_path_for_every_format() {
    let mut rng = Rng::new(31);
    let (w, h) = (38, 22);
    let formats = [
        PixelFormat::Grey,
        PixelFormat::Yuyv,
        PixelFormat::Rgb24,
        PixelFormat::Mjpeg,
    ];
    for format in formats {
        let Some(bpp) = format.bytes_per_pixel() else {
            continue;
        };
        let bpl = w * bpp + 5;
        let data: Vec<u8> = (0..bpl * h).map(|_| rng.below(256) as u8).collect();
        let frame = Frame {
            data: &data,
            format,
            width: w,
            height: h,
            bytes_per_line: bpl,
        };
        for d in [1, 3] {
            if format == PixelFormat::Grey && d == 3 {
                continue;
            }
            let roi = |x, y, width, height| Roi {
                x_px: x,
                y_px: y,
                width_px: width,
                height_px: height,
            };
            for (region, rows, cols) in [
                (roi(3, 2, 30, 17), 7, 11),
                (roi(4, 5, 9, 5), 40, 50),
                (roi(0, 0, 38, 22), 1, 1),
                (roi(2, 1, 14, 9), 9, 14),
            ] {
                let scaling = match d {
                    3 => InputScaling::Centred {
                        mean: vec![0.4, 0.5, 0.6],
                    },
                    _ => InputScaling::Inverted,
                };
                let spec = PreprocessSpec {
                    roi: Some(region),
                    rows,
                    cols,
                    channels: d,
                    scaling,
                };
                check(
                    &frame,
                    &spec,
                    &format!("{format:?} D={d} {region:?} -> {rows}x{cols}"),
                );
            }
        }
    }
}

/// A scene with detail everywhere: gradients, a product term and an XOR
/// pattern, so that every tap of the resize matters.
fn scene(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + y * 3) as u8,
            ((x * y) % 251) as u8,
            ((x ^ y) * 13) as u8,
        ])
    })
}

/// `rgb` as YUYV bytes (BT.601 limited range, the pair's chroma from its
/// left pixel), with `pad` bytes after each row.
fn as_yuyv(rgb: &image::RgbImage, pad: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for y in 0..rgb.height() {
        for x in (0..rgb.width()).step_by(2) {
            let yuv = |p: &image::Rgb<u8>| {
                let [r, g, b] = p.0.map(f32::from);
                (
                    16.0 + 0.257 * r + 0.504 * g + 0.098 * b,
                    128.0 - 0.148 * r - 0.291 * g + 0.439 * b,
                    128.0 + 0.439 * r - 0.368 * g - 0.071 * b,
                )
            };
            let (y0, u, v) = yuv(rgb.get_pixel(x, y));
            let (y1, _, _) = yuv(rgb.get_pixel(x + 1, y));
            out.extend([y0, u, y1, v].map(|c| c.round().clamp(0.0, 255.0) as u8));
        }
        out.extend(std::iter::repeat_n(0x5a, pad));
    }
    out
}

/// The contract as `prepare` runs it on a GPU (the frame in its upload form,
/// MJPEG and image files decoded on the CPU first, then both kernels) equals
/// the CPU reference (`reference` and `scale`) bit for bit: for YUYV, MJPEG,
/// GREY and RGB3 camera frames (padded rows where the format has them), grey
/// buffers and image files, grey and colour models, with and without a
/// region of interest, resizing down and up, to 1x1 and to the region's own
/// size.
#[test]
fn the_device_path_equals_the_cpu_reference_for_every_frame_kind() {
    use crate::data::image_io::encode_png;
    use crate::data::jpeg::test_jpegs::encode;
    use crate::preprocess::{reference, scale, upload_form, FrameData};
    use image::DynamicImage;

    let (w, h) = (46u32, 30u32);
    let rgb = scene(w, h);
    let luma = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    let camera = |format, bytes_per_line, bytes| FrameData::Camera {
        format,
        width: w,
        height: h,
        bytes_per_line,
        bytes,
    };
    let padded = |raw: &[u8], row: usize, pad: usize| -> Vec<u8> {
        raw.chunks(row)
            .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0x5a, pad)))
            .collect()
    };
    let (rw, gw) = (3 * w as usize, w as usize);
    let colour_png = encode_png(&DynamicImage::ImageRgb8(rgb.clone())).unwrap();
    let grey_png = encode_png(&DynamicImage::ImageLuma8(luma.clone())).unwrap();
    let kinds: Vec<(&str, FrameData, &[usize])> = vec![
        (
            "YUYV",
            camera(PixelFormat::Yuyv, 2 * gw + 6, as_yuyv(&rgb, 6)),
            &[1, 3],
        ),
        (
            "MJPEG colour",
            camera(
                PixelFormat::Mjpeg,
                0,
                encode(&DynamicImage::ImageRgb8(rgb.clone())),
            ),
            &[1, 3],
        ),
        (
            "MJPEG grey",
            camera(
                PixelFormat::Mjpeg,
                0,
                encode(&DynamicImage::ImageLuma8(luma.clone())),
            ),
            &[1, 3],
        ),
        (
            "RGB3",
            camera(PixelFormat::Rgb24, rw + 3, padded(rgb.as_raw(), rw, 3)),
            &[1, 3],
        ),
        (
            "GREY",
            camera(PixelFormat::Grey, gw + 2, padded(luma.as_raw(), gw, 2)),
            &[1],
        ),
        (
            "grey buffer",
            FrameData::Grey {
                width: w,
                height: h,
                bytes: luma.as_raw().clone(),
            },
            &[1],
        ),
        ("PNG colour", FrameData::File { bytes: colour_png }, &[3]),
        ("PNG grey", FrameData::File { bytes: grey_png }, &[1]),
    ];
    let roi = |x, y, width, height| {
        Some(Roi {
            x_px: x,
            y_px: y,
            width_px: width,
            height_px: height,
        })
    };
    let cases = [
        (None, 17, 23),
        (None, 61, 97),
        (roi(5, 3, 31, 19), 7, 11),
        (roi(6, 7, 9, 5), 40, 50),
        (roi(0, 0, 46, 30), 1, 1),
        (roi(2, 1, 14, 9), 9, 14),
        (roi(45, 29, 1, 1), 3, 2),
    ];
    let mut checked = 0;
    for (kind, data, channels) in &kinds {
        for &d in *channels {
            for &(region, rows, cols) in &cases {
                let spec = PreprocessSpec {
                    roi: region,
                    rows,
                    cols,
                    channels: d,
                    scaling: match d {
                        3 => InputScaling::Centred {
                            mean: vec![0.4, 0.5, 0.6],
                        },
                        _ => InputScaling::Inverted,
                    },
                };
                let what = format!("{kind} D={d} {region:?} -> {rows}x{cols}");
                let want = reference(data, &spec).unwrap_or_else(|e| panic!("{what}: {e:?}"));
                let up = upload_form(data, d).unwrap_or_else(|e| panic!("{what}: {e:?}"));
                let (op, bytes) = PreprocessOp::new(&up.as_frame(), &spec).unwrap();
                let (planar, scaled) = emulate(&op, bytes);
                let levels = planar
                    .iter()
                    .zip(&want.data)
                    .map(|(&a, &b)| a.abs_diff(b))
                    .max();
                assert_eq!(planar, want.data, "{what}: up to {levels:?} levels apart");
                let want = scale(&want, &spec.scaling)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let bad = bit_mismatches(&scaled, &want);
                assert!(bad.is_empty(), "{what}, scaled: {bad:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 12 * cases.len(), "format and model pairs");
}
