//! GPU parity: every CUDA kernel against its CPU reference (`cpu_fwd`).
//!
//! Built only with `--features cuda`. Every test here is `#[ignore]`d, because
//! CI and most development machines have no GPU, and a GPU test that quietly
//! returned without a GPU would claim a check it never made. They run
//! explicitly, on a machine with a GPU, through `scripts/gpu-run.sh`
//! (`tests gpu_ --ignored`); run that way without a usable GPU they FAIL
//! (`gpu()` panics), they never pass.
//!
//! Tolerance: "1e-4 relative". A score is a dot product that can cancel to
//! near zero, so the error is measured against the larger of |reference| and
//! the same sum over absolute values (`scale`), the usual bound for a
//! reordered float sum. f16/bf16 outputs add their own rounding (2^-11, 2^-8).

use candle_core::{DType, Device, Tensor, Var};
use gcm_inspect::data::synth::{self, Kind};
use gcm_inspect::gpu::{ccm_evidence, ccm_sums, Pick};
use gcm_inspect::model::checkpoint::{new_card, save};
use gcm_inspect::model::config::{InputScaling, ModelConfig};
use gcm_inspect::model::gcm::{varmap_tensors, Gcm};
use gcm_inspect::model::score::gcm_score;
use gcm_inspect::model::{Input, Predictor};
use gcm_inspect::preprocess::device::{preprocess, Frame};
use gcm_inspect::preprocess::{PixelFormat, PreprocessSpec, Roi};
use gcm_inspect::rng::Rng;

/// GPU 0, or a loud failure: these tests must never pass without one.
fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| {
        panic!("GPU parity tests need a CUDA GPU and were run without a usable one: {e}")
    })
}

fn uniform(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.range(lo, hi) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vec1(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Largest `|got - want| / max(|want|, scale)` over all elements.
fn worst_rel(got: &[f64], want: &[f64], scale: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((g, w), s)| (g - w).abs() / w.abs().max(*s).max(1e-30))
        .fold(0.0, f64::max)
}

/// Output rounding of a dtype, relative.
fn rounding(dt: DType) -> f64 {
    match dt {
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        _ => 0.0,
    }
}

/// GPU score of (cwm, img) in `dt` against the CPU reference on the same
/// (rounded) values.
fn check_score(cwm: &Tensor, img: &Tensor, dt: DType, dev: &Device, what: &str) {
    // The values the GPU sees, rounded to dt, as f32 for the reference.
    let cwm_dt = cwm.to_dtype(dt).unwrap();
    let img_dt = img.to_dtype(dt).unwrap();
    let refdt = if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let c32 = cwm_dt.to_dtype(refdt).unwrap();
    let i32_ = img_dt.to_dtype(refdt).unwrap();
    let want = vec1(&gcm_score(&c32, &i32_).unwrap());
    let scale = vec1(&gcm_score(&c32.abs().unwrap(), &i32_.abs().unwrap()).unwrap());
    let got_t = gcm_score(
        &cwm_dt.to_device(dev).unwrap(),
        &img_dt.to_device(dev).unwrap(),
    )
    .unwrap();
    assert_eq!(got_t.dtype(), dt);
    assert_eq!(got_t.dims(), &[cwm.dim(0).unwrap(), cwm.dim(1).unwrap()]);
    let got = vec1(&got_t);
    let err = worst_rel(&got, &want, &scale);
    let tol = 1e-4 + rounding(dt);
    assert!(
        err <= tol,
        "{what} {dt:?}: relative error {err:e} > {tol:e}"
    );
}

#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_score_matches_cpu_on_awkward_shapes() {
    let dev = gpu();
    let mut rng = Rng::new(1);
    // (B, N, D, R, C)
    let mut shapes = vec![
        (1, 1, 1, 1, 1),
        (1, 1, 3, 1, 1),
        (256, 64, 1, 1, 1),
        (3, 5, 1, 3, 5),
        (2, 7, 3, 3, 5),
        (1, 64, 1, 300, 300),
        (1, 2, 1, 300, 300),
        (4, 2, 3, 300, 300),
        (256, 2, 1, 32, 32),
        (256, 10, 3, 8, 8),
        (17, 33, 1, 17, 23),
        (2, 3, 1, 1, 1025),
        (2, 9, 1, 1023, 1),
    ];
    shapes.extend((1..=64).map(|n| (2, n, 1, 13, 11)));
    shapes.extend([1, 2, 3, 31, 64, 127, 128, 255, 256].map(|b| (b, 3, 1, 16, 16)));
    for &(b, n, d, r, c) in &shapes {
        let cwm = uniform(&mut rng, &[b, n, r, c], -1.0, 1.0);
        let img = uniform(&mut rng, &[b, d, r, c], -1.0, 1.0);
        let what = format!("B={b} N={n} D={d} {r}x{c}");
        check_score(&cwm, &img, DType::F32, &dev, &what);
        if b * n * r * c <= 1 << 20 {
            for dt in [DType::F64, DType::F16, DType::BF16] {
                check_score(&cwm, &img, dt, &dev, &what);
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_score_takes_strided_batches_as_they_are() {
    let dev = gpu();
    let mut rng = Rng::new(2);
    let (b, n, d, r, c) = (6, 5, 3, 19, 7);
    let big_cwm = uniform(&mut rng, &[b + 2, n + 3, r, c], -1.0, 1.0);
    let big_img = uniform(&mut rng, &[b + 2, d + 1, r, c], -1.0, 1.0);
    // Class range, channel range and batch range out of larger tensors:
    // strided batch and plane dimensions, contiguous planes, start offsets.
    let cwm = big_cwm.narrow(0, 1, b).unwrap().narrow(1, 2, n).unwrap();
    let img = big_img.narrow(0, 2, b).unwrap().narrow(1, 1, d).unwrap();
    assert!(!cwm.is_contiguous() && !img.is_contiguous());
    let want = vec1(&gcm_score(&cwm, &img).unwrap());
    let scale = vec1(&gcm_score(&cwm.abs().unwrap(), &img.abs().unwrap()).unwrap());
    let gcwm = big_cwm
        .to_device(&dev)
        .unwrap()
        .narrow(0, 1, b)
        .unwrap()
        .narrow(1, 2, n)
        .unwrap();
    let gimg = big_img
        .to_device(&dev)
        .unwrap()
        .narrow(0, 2, b)
        .unwrap()
        .narrow(1, 1, d)
        .unwrap();
    let got = vec1(&gcm_score(&gcwm, &gimg).unwrap());
    let err = worst_rel(&got, &want, &scale);
    assert!(err <= 1e-4, "strided: relative error {err:e}");

    // One image for the whole batch (batch stride 0).
    let one = uniform(&mut rng, &[1, d, r, c], -1.0, 1.0);
    let bcast = one.broadcast_as((b, d, r, c)).unwrap();
    let cwm = uniform(&mut rng, &[b, n, r, c], -1.0, 1.0);
    let want = vec1(&gcm_score(&cwm, &bcast).unwrap());
    let scale = vec1(&gcm_score(&cwm.abs().unwrap(), &bcast.abs().unwrap()).unwrap());
    let gb = one
        .to_device(&dev)
        .unwrap()
        .broadcast_as((b, d, r, c))
        .unwrap();
    let got = vec1(&gcm_score(&cwm.to_device(&dev).unwrap(), &gb).unwrap());
    let err = worst_rel(&got, &want, &scale);
    assert!(err <= 1e-4, "broadcast batch: relative error {err:e}");

    // Planes that are not contiguous (transposed) are copied first, still right.
    let cwm_t = uniform(&mut rng, &[b, n, c, r], -1.0, 1.0)
        .transpose(2, 3)
        .unwrap();
    let img_t = uniform(&mut rng, &[b, d, c, r], -1.0, 1.0)
        .transpose(2, 3)
        .unwrap();
    let want = vec1(&gcm_score(&cwm_t, &img_t).unwrap());
    let scale = vec1(&gcm_score(&cwm_t.abs().unwrap(), &img_t.abs().unwrap()).unwrap());
    let got = vec1(
        &gcm_score(
            &cwm_t.to_device(&dev).unwrap(),
            &img_t.to_device(&dev).unwrap(),
        )
        .unwrap(),
    );
    let err = worst_rel(&got, &want, &scale);
    assert!(err <= 1e-4, "transposed planes: relative error {err:e}");
}

#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_score_backward_matches_cpu() {
    let dev = gpu();
    let mut rng = Rng::new(3);
    for &(b, n, d, r, c) in &[
        (1, 1, 1, 1, 1),
        (2, 3, 3, 3, 5),
        (4, 10, 1, 32, 32),
        (3, 64, 3, 17, 9),
    ] {
        for dt in [DType::F32, DType::F64] {
            let cwm = uniform(&mut rng, &[b, n, r, c], -1.0, 1.0)
                .to_dtype(dt)
                .unwrap();
            let img = uniform(&mut rng, &[b, d, r, c], -1.0, 1.0)
                .to_dtype(dt)
                .unwrap();
            let w = uniform(&mut rng, &[b, n], -1.0, 1.0).to_dtype(dt).unwrap();
            let grads = |device: &Device| -> (Vec<f64>, Vec<f64>) {
                let cv = Var::from_tensor(&cwm.to_device(device).unwrap()).unwrap();
                let iv = Var::from_tensor(&img.to_device(device).unwrap()).unwrap();
                let s = gcm_score(cv.as_tensor(), iv.as_tensor()).unwrap();
                let loss = (s * w.to_device(device).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = loss.backward().unwrap();
                (vec1(g.get(&cv).unwrap()), vec1(g.get(&iv).unwrap()))
            };
            let (want_c, want_i) = grads(&Device::Cpu);
            let (got_c, got_i) = grads(&dev);
            for (what, got, want) in [("CWM", got_c, want_c), ("image", got_i, want_i)] {
                let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0, f64::max)
                    / scale.max(1e-30);
                assert!(
                    err <= 1e-5,
                    "grad {what} B={b} N={n} D={d} {r}x{c} {dt:?}: error {err:e}"
                );
            }
        }
    }
}

/// Frame width, height, padding bytes a line, region of interest, output
/// columns and rows.
type FrameCase = (usize, usize, usize, Option<Roi>, usize, usize);

fn noise(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.below(256) as u8).collect()
}

#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_preprocess_matches_cpu_reference() {
    let dev = gpu();
    let mut rng = Rng::new(4);
    let scalings = [
        InputScaling::Raw,
        InputScaling::Inverted,
        InputScaling::Centred {
            mean: vec![0.4, 0.5, 0.6],
        },
    ];
    // (frame w, h, padding bytes a line, roi, out cols, rows)
    let cases: &[FrameCase] = &[
        (1280, 960, 0, None, 256, 256),
        (
            640,
            480,
            64,
            Some(Roi {
                x_px: 170,
                y_px: 90,
                width_px: 300,
                height_px: 300,
            }),
            256,
            256,
        ),
        (300, 300, 0, None, 300, 300),
        (64, 48, 3, None, 96, 80),
        (
            6,
            4,
            0,
            Some(Roi {
                x_px: 1,
                y_px: 1,
                width_px: 3,
                height_px: 2,
            }),
            5,
            3,
        ),
        (2, 2, 0, None, 1, 1),
        (8, 1, 0, None, 3, 5),
    ];
    for &(w, h, pad, roi, cols, rows) in cases {
        for format in [PixelFormat::Grey, PixelFormat::Yuyv, PixelFormat::Rgb24] {
            let bpl = w * format.bytes_per_pixel().unwrap() + pad;
            let data = noise(&mut rng, bpl * h);
            let frame = Frame {
                data: &data,
                format,
                width: w,
                height: h,
                bytes_per_line: bpl,
            };
            for channels in [1, 3] {
                for scaling in &scalings {
                    let mut scaling = scaling.clone();
                    if let InputScaling::Centred { mean } = &mut scaling {
                        mean.truncate(channels);
                    }
                    let spec = PreprocessSpec {
                        roi,
                        rows,
                        cols,
                        channels,
                        scaling,
                    };
                    if format == PixelFormat::Grey && channels == 3 {
                        continue;
                    }
                    let want = preprocess(&frame, &spec, &Device::Cpu).unwrap();
                    let got = preprocess(&frame, &spec, &dev).unwrap();
                    assert!(got.planar.device().is_cuda() && got.scaled.device().is_cuda());
                    assert_eq!(got.scaled.dims(), &[1, channels, rows, cols]);
                    // The contract's stated tolerance: none. The 8-bit input
                    // and the scaled input are the CPU reference's bits.
                    let bytes = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
                    assert_eq!(
                        bytes(&got.planar),
                        bytes(&want.planar),
                        "{format:?} {w}x{h}+{pad} {roi:?} -> {cols}x{rows}x{channels}"
                    );
                    assert_eq!(
                        vec1(&got.scaled),
                        vec1(&want.scaled),
                        "{format:?} {w}x{h}+{pad} {roi:?} -> {cols}x{rows}x{channels} {}",
                        spec.scaling.name()
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_evidence_matches_cpu_reference_exactly() {
    let dev = gpu();
    let mut rng = Rng::new(5);
    for &(b, n, d, r, c) in &[
        (1, 1, 1, 1, 1),
        (3, 2, 1, 3, 5),
        (2, 10, 3, 32, 32),
        (4, 2, 1, 300, 300),
    ] {
        let cwm = uniform(&mut rng, &[b, n, r, c], -2.0, 2.0);
        let img = uniform(&mut rng, &[b, d, r, c], 0.0, 1.0);
        let picks: Vec<Pick> = (0..b)
            .flat_map(|f| {
                [
                    Pick {
                        frame: f,
                        class: f % n,
                    },
                    Pick {
                        frame: f,
                        class: n - 1,
                    },
                ]
            })
            .collect();
        let (gc, gi) = (cwm.to_device(&dev).unwrap(), img.to_device(&dev).unwrap());
        let want = ccm_evidence(&cwm, &img, &picks).unwrap();
        let got = ccm_evidence(&gc, &gi, &picks).unwrap();
        // Same f32 products, IEEE f64 division and round-half-away on both
        // sides: the stored evidence is bit-identical to the host format's.
        assert_eq!(got, want, "B={b} N={n} D={d} {r}x{c}");
        // Check (a)'s sums: integers, so exact whatever the order.
        let want = ccm_sums(&cwm, &img, &picks).unwrap();
        let got = ccm_sums(&gc, &gi, &picks).unwrap();
        assert_eq!(got, want, "sums: B={b} N={n} D={d} {r}x{c}");
    }
}

/// A Table 3 network with non-trivial BatchNorm statistics, saved as a model
/// directory (so CPU and GPU load the very same weights).
fn model_dir(cfg: &ModelConfig, seed: u64) -> tempfile::TempDir {
    let (_, vm) = Gcm::init(cfg, seed, &Device::Cpu).unwrap();
    let mut rng = Rng::new(seed + 100);
    for (name, t) in varmap_tensors(&vm) {
        if name.contains(".bn.") {
            let v: Vec<f32> = (0..t.elem_count())
                .map(|_| {
                    if name.ends_with("running_var") {
                        rng.range(0.5, 2.0) as f32
                    } else {
                        rng.range(-0.3, 0.3) as f32
                    }
                })
                .collect();
            let data = vm.data().lock().unwrap();
            data[&name]
                .set(&Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &varmap_tensors(&vm), new_card(cfg.clone())).unwrap();
    dir
}

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

/// Largest |got - want| over the largest |want|.
fn rel_to_max(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (vec1(got), vec1(want));
    let scale = w.iter().map(|v| v.abs()).fold(0.0, f64::max);
    g.iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale.max(1e-30)
}

#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_whole_model_matches_cpu() {
    let dev = gpu();
    let mut rng = Rng::new(6);
    for (r, c, d, n, shared) in [
        (64, 64, 1, 2, true),
        (32, 32, 3, 10, true),
        (32, 48, 1, 3, false),
    ] {
        let mut cfg = ModelConfig::table3(r, c, d, classes(n));
        cfg.shared_decoder = shared;
        let dir = model_dir(&cfg, 7);
        let cpu = Predictor::load(dir.path(), &Device::Cpu).unwrap();
        let gpu = Predictor::load(dir.path(), &dev).unwrap();
        let x = uniform(&mut rng, &[4, d, r, c], 0.0, 1.0);
        let want = cpu.forward(Input::Raw(&x)).unwrap();
        let got = gpu.forward(Input::Raw(&x)).unwrap();
        assert!(got.scores.device().is_cuda());
        for (what, g, w) in [
            ("CWM", &got.cwm, &want.cwm),
            ("scores", &got.scores, &want.scores),
        ] {
            let err = rel_to_max(g, w);
            assert!(err <= 1e-4, "{what} {r}x{c}x{d} N={n}: error {err:e}");
        }
    }
}

/// The daemon's reference cross-check, on a replay: camera frames (GREY
/// bytes, larger than the model's input, with a region of interest) go
/// through preprocessing and the model on the GPU, and again through the CPU
/// reference path; decisions must agree and scores match to 1e-4 of the
/// largest score. The GPU's evidence for the decided class must reproduce the
/// GPU's score from its quantised parts.
#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_replay_reference_cross_check() {
    let dev = gpu();
    let mut cfg = ModelConfig::table3(256, 256, 1, vec!["crack".into(), "ok".into()]);
    cfg.scaling = InputScaling::Inverted;
    let dir = model_dir(&cfg, 11);
    let cpu = Predictor::load(dir.path(), &Device::Cpu).unwrap();
    let gpu = Predictor::load(dir.path(), &dev).unwrap();
    let spec = PreprocessSpec {
        roi: Some(Roi {
            x_px: 10,
            y_px: 10,
            width_px: 300,
            height_px: 300,
        }),
        ..PreprocessSpec::for_model(&cfg, None)
    };
    let kinds = [Kind::Crack, Kind::Ok];
    let frames = 24;
    let mut agree = 0;
    for i in 0..frames {
        let (_, bytes) = synth::sample(42, i, 320, &kinds);
        let frame = Frame::packed(&bytes, PixelFormat::Grey, 320, 320);
        let run = |p: &Predictor, device: &Device| {
            let scaled = preprocess(&frame, &spec, device).unwrap().scaled;
            let net = p.network();
            let cwm = net.cwm(&scaled).unwrap();
            let scores = gcm_score(&cwm, &scaled).unwrap();
            (scaled, cwm, scores)
        };
        let (_, _, want) = run(&cpu, &Device::Cpu);
        let (gs, gc, got) = run(&gpu, &dev);
        let dw = cpu.decide(&want).unwrap().remove(0);
        let dg = gpu.decide(&got).unwrap().remove(0);
        let err = rel_to_max(&got, &want);
        assert!(
            err <= 1e-4,
            "frame {i}: scores {:?} vs {:?}",
            dg.scores,
            dw.scores
        );
        // A near-tie may flip between two correct float sums; anything else fails.
        if dg.class_index == dw.class_index {
            agree += 1;
        } else {
            let margin = (dw.scores[0] - dw.scores[1]).abs() as f64;
            let top = dw.scores.iter().map(|s| s.abs() as f64).fold(0.0, f64::max);
            assert!(
                margin <= 2e-4 * top,
                "frame {i}: decisions differ ({dg:?} vs {dw:?})"
            );
        }
        // The GPU's evidence, as the evidence format stores it, gives the
        // GPU's scores back within the format's tolerance.
        let picks: Vec<Pick> = (0..2).map(|class| Pick { frame: 0, class }).collect();
        for (q, p) in ccm_evidence(&gc, &gs, &picks).unwrap().iter().zip(&picks) {
            let s = dg.scores[p.class] as f64;
            assert!(
                (q.score() - s).abs() <= q.tolerance(s),
                "frame {i} class {}: evidence score {} vs {s}",
                p.class,
                q.score()
            );
        }
    }
    println!("replay cross-check: {agree}/{frames} decisions identical, all scores within 1e-4");
}

/// The preprocessing contract through `prepare` for every kind of frame the
/// daemon gets (camera buffers, MJPEG, image files, synthetic grey): the
/// GPU's 8-bit input and scaled input are the CPU reference's, bit for bit,
/// and the evidence built from the GPU's maps (quantised CCMs and check
/// (a)'s sums) equals the host's.
#[test]
#[ignore = "needs a GPU: run by scripts/gpu-run.sh (tests gpu_ --ignored)"]
fn gpu_prepare_takes_every_frame_kind_through_the_one_contract() {
    use gcm_inspect::evidence::{DeviceMaps, Maps};
    use gcm_inspect::preprocess::{prepare, FrameData};
    let dev = gpu();
    let mut rng = Rng::new(17);
    let (w, h) = (96u32, 72u32);
    let rgb = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&rgb)
        .unwrap();
    let png = |img: image::DynamicImage| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let camera = |format, bytes: Vec<u8>| FrameData::Camera {
        format,
        width: w,
        height: h,
        bytes_per_line: 0,
        bytes,
    };
    for channels in [1usize, 3] {
        let mut cfg = ModelConfig::table3(32, 32, channels, vec!["a".into(), "b".into()]);
        cfg.scaling = InputScaling::Inverted;
        let dir = model_dir(&cfg, 3);
        let (cpu, gpu_p) = (
            Predictor::load(dir.path(), &Device::Cpu).unwrap(),
            Predictor::load(dir.path(), &dev).unwrap(),
        );
        let spec = PreprocessSpec {
            roi: Some(Roi {
                x_px: 5,
                y_px: 3,
                width_px: 80,
                height_px: 64,
            }),
            ..PreprocessSpec::for_model(&cfg, None)
        };
        let mut frames = vec![
            (
                "YUYV",
                camera(PixelFormat::Yuyv, noise(&mut rng, (2 * w * h) as usize)),
            ),
            ("RGB3", camera(PixelFormat::Rgb24, rgb.clone().into_raw())),
            ("MJPEG", camera(PixelFormat::Mjpeg, jpeg.clone())),
        ];
        if channels == 1 {
            let grey = image::DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
            frames.push(("GREY", camera(PixelFormat::Grey, grey.clone().into_raw())));
            frames.push((
                "PNG",
                FrameData::File {
                    bytes: png(grey.into()),
                },
            ));
            frames.push((
                "synthetic",
                FrameData::Grey {
                    width: w,
                    height: h,
                    bytes: noise(&mut rng, (w * h) as usize),
                },
            ));
        } else {
            frames.push((
                "PNG",
                FrameData::File {
                    bytes: png(rgb.clone().into()),
                },
            ));
        }
        for (name, frame) in &frames {
            let want = prepare(frame, &spec, &Device::Cpu).unwrap();
            let got = prepare(frame, &spec, &dev).unwrap();
            assert!(got.scaled.device().is_cuda(), "{name}");
            assert_eq!(got.planar, want.planar, "{name}, D = {channels}");
            assert_eq!(
                vec1(&got.scaled),
                vec1(&want.scaled),
                "{name}, D = {channels}"
            );
            let (oc, og) = (
                cpu.forward(Input::Scaled(&want.scaled)).unwrap(),
                gpu_p.forward(Input::Scaled(&got.scaled)).unwrap(),
            );
            let mc = DeviceMaps::from_batch(&oc.scaled, &oc.cwm, 0).unwrap();
            let mg = DeviceMaps::from_batch(&og.scaled, &og.cwm, 0).unwrap();
            // Same maps within the network's float tolerance; the quantised
            // evidence of the GPU's own maps equals the host's quantisation
            // of those same maps.
            let host =
                gcm_inspect::evidence::FrameMaps::from_batch(&og.scaled, &og.cwm, 0).unwrap();
            assert_eq!(mg.quantised().unwrap(), host.quantised().unwrap(), "{name}");
            assert_eq!(mg.sums().unwrap(), host.sums().unwrap(), "{name}");
            let (sc, sg) = (mc.sums().unwrap(), mg.sums().unwrap());
            for (a, b) in sc.iter().zip(&sg) {
                assert!(
                    (a.score() - b.score()).abs() <= 1e-3 * a.score().abs().max(1.0),
                    "{name}"
                );
            }
        }
    }
}
