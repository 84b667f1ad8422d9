//! GPU benchmarks (built only with `--features cuda`; needs a GPU to run).
//!
//! ```text
//! cargo bench --features cuda --bench gpu -- --out-dir DIR
//! ```
//! (or the carried executable with `--out-dir DIR`, see scripts/gpu-run.sh).
//!
//! Measures, on GPU 0:
//! 1. device-to-device copy bandwidth (bytes read + written per second), the
//!    memory-bandwidth yardstick of the same run;
//! 2. the fused score against candle's stock ops for the same result
//!    (tile-multiply-average with `broadcast_mul` + `mean`, and the same with
//!    the channel sum taken first), as useful bytes moved per second (each
//!    input read once, scores written once) and as % of the copy bandwidth;
//! 3. the fused backward against the stock tensor-op backward;
//! 4. frame preprocessing (1280x960 camera frame -> 256x256) and CCM evidence;
//! 5. the Table 3 network at 256x256 grey, 2 classes (BatchNorm folded):
//!    latency at batch 1 (input on the GPU; and from camera bytes to the
//!    decision on the host), throughput at batch 64.
//!
//! Writes `DIR/bench.json`, the model (`DIR/model/`), a batch of inputs and
//! our scores for it (`DIR/input.safetensors`, `DIR/scores.safetensors`), so
//! `scripts/reference/gcm_torch_gpu.py` can run the same network with the same
//! weights in PyTorch, check it gives the same scores, and time it.
//!
//! Timing: wall clock around batches of launches closed by a device
//! synchronisation, after warm-up; the median over repetitions is reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use gcm_inspect::gpu::{ccm_evidence, Pick};
use gcm_inspect::model::checkpoint::{new_card, save};
use gcm_inspect::model::config::ModelConfig;
use gcm_inspect::model::gcm::{varmap_tensors, Gcm};
use gcm_inspect::model::score::gcm_score;
use gcm_inspect::model::{Input, Predictor};
use gcm_inspect::preprocess::device::{preprocess, Frame};
use gcm_inspect::preprocess::{PixelFormat, PreprocessSpec};
use gcm_inspect::rng::Rng;
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Median and minimum seconds per call.
#[derive(Clone, Copy, Debug)]
struct Timing {
    median: f64,
    min: f64,
}

/// Times `f` on `dev`: warm-up, then `reps` batches of calls sized to take
/// about 20 ms each, each batch closed by a synchronisation.
fn time_it(dev: &Device, reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<Timing> {
    for _ in 0..3 {
        f()?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    f()?;
    dev.synchronize()?;
    let one = t0.elapsed().as_secs_f64().max(1e-7);
    let inner = ((0.02 / one).ceil() as usize).clamp(1, 2000);
    let mut per = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..inner {
            f()?;
        }
        dev.synchronize()?;
        per.push(t.elapsed().as_secs_f64() / inner as f64);
    }
    per.sort_by(f64::total_cmp);
    Ok(Timing {
        median: per[per.len() / 2],
        min: per[0],
    })
}

fn uniform(rng: &mut Rng, shape: &[usize], dev: &Device) -> Res<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(dev)?)
}

fn copy_bandwidth(dev: &Device) -> Res<f64> {
    let Device::Cuda(cd) = dev else {
        return Err("not a CUDA device".into());
    };
    let n = 256 << 20; // 256 Mi f32 = 1 GiB
    let src = cd.alloc_zeros::<f32>(n)?;
    let mut dst = cd.alloc_zeros::<f32>(n)?;
    let t = time_it(dev, 10, || {
        cd.memcpy_dtod(&src, &mut dst)?;
        Ok(())
    })?;
    let bytes = 2.0 * (n * 4) as f64;
    let gbs = bytes / t.median / 1e9;
    println!("device-to-device copy: {gbs:.0} GB/s (read + write, 1 GiB, median)");
    Ok(gbs)
}

/// Useful bytes of one score problem: inputs read once, scores written once.
fn score_bytes(b: usize, n: usize, d: usize, hw: usize, dt: DType) -> f64 {
    ((b * n * hw + b * d * hw + b * n) * dt.size_in_bytes()) as f64
}

fn bench_score(dev: &Device, copy_gbs: f64, rng: &mut Rng) -> Res<Vec<Value>> {
    let mut rows = Vec::new();
    println!("\nfused score vs candle stock ops (useful bytes / time, % of copy bandwidth)");
    println!(
        "{:<34} {:>10} {:>9} {:>7} {:>10} {:>9} {:>10} {:>9} {:>8}",
        "problem", "fused us", "GB/s", "%copy", "stock us", "GB/s", "stock2 us", "GB/s", "speedup"
    );
    let cases: &[(usize, usize, usize, usize, usize, DType)] = &[
        (64, 16, 1, 256, 256, DType::F32),
        (64, 2, 1, 256, 256, DType::F32),
        (8, 10, 3, 300, 300, DType::F32),
        (1, 2, 1, 256, 256, DType::F32),
        (64, 16, 1, 256, 256, DType::F16),
        (64, 16, 1, 256, 256, DType::BF16),
    ];
    for &(b, n, d, r, c, dt) in cases {
        let cwm = uniform(rng, &[b, n, r, c], dev)?.to_dtype(dt)?;
        let img = uniform(rng, &[b, d, r, c], dev)?.to_dtype(dt)?;
        // The three must agree before they are timed.
        let fused = gcm_score(&cwm, &img)?;
        let stock = || -> candle_core::Result<Tensor> {
            cwm.unsqueeze(2)?
                .broadcast_mul(&img.unsqueeze(1)?)?
                .flatten_from(2)?
                .mean(2)
        };
        let stock2 = || -> candle_core::Result<Tensor> {
            cwm.broadcast_mul(&img.sum_keepdim(1)?)?
                .flatten_from(2)?
                .mean(2)?
                / d as f64
        };
        let diff = (fused.to_dtype(DType::F32)? - stock()?.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let top = stock()?
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let tf = time_it(dev, 15, || {
            gcm_score(&cwm, &img)?;
            Ok(())
        })?;
        let ts = time_it(dev, 7, || {
            stock()?;
            Ok(())
        })?;
        let ts2 = time_it(dev, 7, || {
            stock2()?;
            Ok(())
        })?;
        let bytes = score_bytes(b, n, d, r * c, dt);
        let g = |t: Timing| bytes / t.median / 1e9;
        let name = format!("B={b} N={n} D={d} {r}x{c} {dt:?}");
        println!(
            "{name:<34} {:>10.1} {:>9.0} {:>6.1}% {:>10.1} {:>9.0} {:>10.1} {:>9.0} {:>7.1}x",
            tf.median * 1e6,
            g(tf),
            100.0 * g(tf) / copy_gbs,
            ts.median * 1e6,
            g(ts),
            ts2.median * 1e6,
            g(ts2),
            ts.median / tf.median
        );
        rows.push(json!({
            "problem": name, "bytes": bytes,
            "fused_us": tf.median * 1e6, "fused_min_us": tf.min * 1e6, "fused_gbs": g(tf),
            "fused_pct_of_copy": 100.0 * g(tf) / copy_gbs,
            "stock_us": ts.median * 1e6, "stock_gbs": g(ts),
            "stock_channel_sum_first_us": ts2.median * 1e6, "stock_channel_sum_first_gbs": g(ts2),
            "speedup_over_stock": ts.median / tf.median,
            "speedup_over_stock_channel_sum_first": ts2.median / tf.median,
            "max_abs_diff_vs_stock": diff, "max_abs_score": top,
        }));
    }
    Ok(rows)
}

fn bench_backward(dev: &Device, rng: &mut Rng) -> Res<Value> {
    let (b, n, d, r, c) = (64, 16, 1, 256, 256);
    let cwm = Var::from_tensor(&uniform(rng, &[b, n, r, c], dev)?)?;
    let img = Var::from_tensor(&uniform(rng, &[b, d, r, c], dev)?)?;
    let w = uniform(rng, &[b, n], dev)?;
    let fused = time_it(dev, 7, || {
        let loss = (gcm_score(cwm.as_tensor(), img.as_tensor())? * &w)?.sum_all()?;
        drop(loss.backward()?);
        Ok(())
    })?;
    // The same gradients with stock tensor ops (the CPU backward's formula).
    let inv = 1.0 / (r * c * d) as f64;
    let stock = time_it(dev, 7, || {
        let g = (w.reshape((b, n, 1, 1))? * inv)?;
        let s = img.as_tensor().sum_keepdim(1)?;
        let gc = g.broadcast_mul(&s)?;
        let gi = cwm
            .as_tensor()
            .broadcast_mul(&g)?
            .sum_keepdim(1)?
            .broadcast_as((b, d, r, c))?
            .contiguous()?;
        drop((gc, gi));
        Ok(())
    })?;
    println!(
        "\nbackward B={b} N={n} {r}x{c}: fused forward+backward {:.1} us; stock gradient ops alone {:.1} us",
        fused.median * 1e6,
        stock.median * 1e6
    );
    Ok(json!({
        "problem": format!("B={b} N={n} D={d} {r}x{c} F32"),
        "fused_forward_backward_us": fused.median * 1e6,
        "stock_gradient_ops_us": stock.median * 1e6,
    }))
}

fn bench_preprocess_and_evidence(dev: &Device, rng: &mut Rng) -> Res<Value> {
    let (w, h) = (1280, 960);
    let cfg = ModelConfig::table3(256, 256, 1, vec!["crack".into(), "ok".into()]);
    let spec = PreprocessSpec::for_model(&cfg, None);
    let mut out = serde_json::Map::new();
    for format in [PixelFormat::Grey, PixelFormat::Yuyv] {
        let bytes: Vec<u8> = (0..w * h * format.bytes_per_pixel().unwrap())
            .map(|_| rng.below(256) as u8)
            .collect();
        let frame = Frame::packed(&bytes, format, w, h);
        let g = time_it(dev, 11, || {
            preprocess(&frame, &spec, dev)?;
            Ok(())
        })?;
        let t = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            drop(preprocess(&frame, &spec, &Device::Cpu)?);
        }
        let cpu = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "preprocess {format:?} {w}x{h} -> 256x256: GPU {:.1} us (upload included), CPU reference {:.1} us",
            g.median * 1e6,
            cpu * 1e6
        );
        out.insert(
            format!("preprocess_{format:?}_1280x960_to_256_us"),
            json!({"gpu": g.median * 1e6, "cpu_reference": cpu * 1e6}),
        );
    }
    let cwm = uniform(rng, &[8, 2, 256, 256], dev)?;
    let img = uniform(rng, &[8, 1, 256, 256], dev)?;
    let pick = [Pick { frame: 3, class: 1 }];
    let t = time_it(dev, 11, || {
        ccm_evidence(&cwm, &img, &pick)?;
        Ok(())
    })?;
    println!(
        "evidence for one 256x256 map (16-bit parts, to host): {:.1} us",
        t.median * 1e6
    );
    out.insert("evidence_one_256_map_us".into(), json!(t.median * 1e6));
    Ok(Value::Object(out))
}

fn bench_model(dev: &Device, out_dir: &std::path::Path, rng: &mut Rng) -> Res<Value> {
    let cfg = ModelConfig::table3(256, 256, 1, vec!["crack".into(), "ok".into()]);
    let (_, vm) = Gcm::init(&cfg, 2024, &Device::Cpu)?;
    let model_dir = out_dir.join("model");
    save(&model_dir, &varmap_tensors(&vm), new_card(cfg.clone()))?;
    let p = Predictor::load(&model_dir, dev)?;
    let net = p.network();

    let x1 = uniform(rng, &[1, 1, 256, 256], &Device::Cpu)?
        .affine(0.5, 0.5)?
        .to_device(dev)?;
    let lat = time_it(dev, 21, || {
        let s = p.forward(Input::Raw(&x1))?.scores.to_vec2::<f32>()?;
        drop(s);
        Ok(())
    })?;
    // From camera bytes on the host to the decision on the host.
    let (fw, fh) = (1280, 960);
    let cam: Vec<u8> = (0..fw * fh).map(|_| rng.below(256) as u8).collect();
    let frame = Frame::packed(&cam, PixelFormat::Grey, fw, fh);
    let spec = PreprocessSpec::for_model(&cfg, None);
    let cam_lat = time_it(dev, 21, || {
        let scaled = preprocess(&frame, &spec, dev)?.scaled;
        let cwm = net.cwm(&scaled)?;
        let s = gcm_score(&cwm, &scaled)?.to_vec2::<f32>()?;
        drop(s);
        Ok(())
    })?;
    let x64 = uniform(rng, &[64, 1, 256, 256], &Device::Cpu)?.affine(0.5, 0.5)?;
    let x64d = x64.to_device(dev)?;
    let thr = time_it(dev, 9, || {
        p.forward(Input::Raw(&x64d))?;
        Ok(())
    })?;
    let ips = 64.0 / thr.median;
    println!(
        "\nTable 3 GCM, 256x256 grey, 2 classes: batch 1 latency {:.3} ms (input on GPU), \
         {:.3} ms camera bytes to decision; batch 64 throughput {ips:.0} images/s",
        lat.median * 1e3,
        cam_lat.median * 1e3
    );
    // For the PyTorch twin: the same inputs and our scores.
    let scores = p
        .forward(Input::Raw(&x64d))?
        .scores
        .to_device(&Device::Cpu)?;
    let mut ts = HashMap::new();
    ts.insert("x".to_string(), x64);
    candle_core::safetensors::save(&ts, out_dir.join("input.safetensors"))?;
    let mut ts = HashMap::new();
    ts.insert("scores".to_string(), scores);
    candle_core::safetensors::save(&ts, out_dir.join("scores.safetensors"))?;
    Ok(json!({
        "model": "Table 3, 256x256x1, N=2, BatchNorm folded, f32",
        "batch1_latency_ms": lat.median * 1e3,
        "batch1_latency_min_ms": lat.min * 1e3,
        "batch1_camera_to_decision_ms": cam_lat.median * 1e3,
        "batch64_ms": thr.median * 1e3,
        "batch64_images_per_s": ips,
    }))
}

fn main() -> Res<()> {
    let mut out_dir = PathBuf::from("target/gpu-bench");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--out-dir" {
            out_dir = PathBuf::from(args.next().ok_or("--out-dir needs a folder")?);
        }
        // Anything else (cargo bench passes --bench) is ignored.
    }
    std::fs::create_dir_all(&out_dir)?;
    let dev =
        Device::new_cuda(0).map_err(|e| format!("the GPU benchmarks need a CUDA GPU: {e}"))?;
    let mut rng = Rng::new(99);
    let copy = copy_bandwidth(&dev)?;
    let score = bench_score(&dev, copy, &mut rng)?;
    let backward = bench_backward(&dev, &mut rng)?;
    let ops = bench_preprocess_and_evidence(&dev, &mut rng)?;
    let model = bench_model(&dev, &out_dir, &mut rng)?;
    let report = json!({
        "copy_gbs_read_plus_write": copy,
        "score": score,
        "backward": backward,
        "ops": ops,
        "model": model,
    });
    let path = out_dir.join("bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
