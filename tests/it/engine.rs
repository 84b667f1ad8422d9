//! The CPU convolution engine against candle's stock ops (which run for `f64`
//! and when called directly), against finite differences, and end to end
//! through the GCM's training and inference paths.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use gcm_inspect::engine;
use gcm_inspect::model::config::ModelConfig;
use gcm_inspect::model::folded::FoldedGcm;
use gcm_inspect::model::gcm::{varmap_tensors, Gcm};
use gcm_inspect::model::layers::BatchNorm;
use gcm_inspect::rng::Rng;

use super::util;

fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .max(1.0);
    let d = (a - b).unwrap().abs().unwrap().max(0).unwrap();
    (d.to_scalar::<f64>().unwrap() / scale) as f32
}

/// `L = sum(f(x, w) * r)` and its gradients through `f`.
fn grads(
    f: &dyn Fn(&Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(w).unwrap();
    let y = f(xv.as_tensor(), wv.as_tensor());
    let loss = (&y * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    (y, g.get(&xv).unwrap().clone(), g.get(&wv).unwrap().clone())
}

#[test]
fn conv2d_matches_candle_forward_and_backward_on_random_shapes() {
    let mut rng = Rng::new(101);
    for case in 0..24 {
        let b = 1 + rng.below(3);
        let ci = [1, 3, 16, 17][rng.below(4)];
        let co = [1, 2, 5, 16, 19][rng.below(5)];
        let k = [3, 5][rng.below(2)];
        let s = 1 + rng.below(2);
        let p = [0, k / 2][rng.below(2)];
        let h = k + rng.below(14);
        let w = k + rng.below(20);
        let x = rand(&mut rng, &[b, ci, h, w]);
        let wt = rand(&mut rng, &[co, ci, k, k]);
        let ours = |x: &Tensor, w: &Tensor| engine::conv2d(x, w, s, p).unwrap();
        let stock = |x: &Tensor, w: &Tensor| x.conv2d(w, p, s, 1, 1).unwrap();
        let y = stock(&x, &wt);
        let r = rand(&mut rng, y.dims());
        let (ya, gxa, gwa) = grads(&ours, &x, &wt, &r);
        let what = format!("case {case}: b{b} {ci}->{co} {h}x{w} k{k} s{s} p{p}");
        assert!(max_diff(&ya, &y) < 1e-5, "{what}: forward");
        // candle's own conv2d backward fails when a strided convolution leaves
        // input rows or columns unused; finite differences cover those shapes.
        if s > 1 && (!(h + 2 * p - k).is_multiple_of(s) || !(w + 2 * p - k).is_multiple_of(s)) {
            continue;
        }
        let (_, gxb, gwb) = grads(&stock, &x, &wt, &r);
        assert!(max_diff(&gxa, &gxb) < 1e-5, "{what}: input gradient");
        assert!(max_diff(&gwa, &gwb) < 1e-5, "{what}: weight gradient");
    }
}

#[test]
fn conv_transpose2d_matches_candle_forward_and_backward() {
    let mut rng = Rng::new(102);
    for case in 0..16 {
        let b = 1 + rng.below(3);
        let ci = [1, 4, 16, 33][rng.below(4)];
        let co = [1, 3, 16][rng.below(3)];
        let k = [3, 5][rng.below(2)];
        let p = k / 2;
        let h = 1 + rng.below(9);
        let w = 1 + rng.below(13);
        let x = rand(&mut rng, &[b, ci, h, w]);
        let wt = rand(&mut rng, &[ci, co, k, k]);
        let ours = |x: &Tensor, w: &Tensor| engine::conv_transpose2d(x, w, 2, p, 1).unwrap();
        let stock = |x: &Tensor, w: &Tensor| x.conv_transpose2d(w, p, 1, 2, 1).unwrap();
        let y = stock(&x, &wt);
        assert_eq!(
            y.dims(),
            &[b, co, 2 * h + k - 2 * p - 1, 2 * w + k - 2 * p - 1]
        );
        let r = rand(&mut rng, y.dims());
        let (ya, gxa, gwa) = grads(&ours, &x, &wt, &r);
        let (_, gxb, gwb) = grads(&stock, &x, &wt, &r);
        let what = format!("case {case}: b{b} {ci}->{co} {h}x{w} k{k}");
        assert!(max_diff(&ya, &y) < 1e-5, "{what}: forward");
        assert!(max_diff(&gxa, &gxb) < 1e-5, "{what}: input gradient");
        assert!(max_diff(&gwa, &gwb) < 1e-5, "{what}: weight gradient");
    }
}

/// Central differences of `L = sum(f(x, w) * r)` at a few coordinates.
/// `L` is linear in each argument, so a large step only costs rounding.
fn check_finite_differences(
    f: &dyn Fn(&Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    rng: &mut Rng,
    what: &str,
) {
    let y = f(x, w);
    let r = rand(rng, y.dims());
    let (_, gx, gw) = grads(f, x, w, &r);
    let loss = |x: &Tensor, w: &Tensor| -> f64 {
        let y = f(x, w).to_dtype(DType::F64).unwrap();
        let r = r.to_dtype(DType::F64).unwrap();
        (y * r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (is_x, t, g) in [(true, x, &gx), (false, w, &gw)] {
        let base = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for _ in 0..12 {
            let i = rng.below(base.len());
            let eps = 0.25f32;
            let at = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                let t2 = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                if is_x {
                    loss(&t2, w)
                } else {
                    loss(x, &t2)
                }
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let tol = 1e-3 * (1.0 + fd.abs());
            assert!(
                (fd - g[i] as f64).abs() < tol,
                "{what}: d/d{}[{i}]: finite difference {fd} vs backward {}",
                if is_x { "x" } else { "w" },
                g[i]
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(103);
    for (ci, co, h, w, k, s) in [
        (3, 5, 7, 9, 3, 1),
        (2, 3, 9, 6, 3, 2),
        (4, 2, 6, 7, 5, 1),
        (17, 3, 5, 5, 3, 2),
    ] {
        let x = rand(&mut rng, &[2, ci, h, w]);
        let wt = rand(&mut rng, &[co, ci, k, k]);
        let conv = move |x: &Tensor, w: &Tensor| engine::conv2d(x, w, s, k / 2).unwrap();
        check_finite_differences(
            &conv,
            &x,
            &wt,
            &mut rng,
            &format!("conv {ci}->{co} k{k} s{s}"),
        );
        let wt = rand(&mut rng, &[ci, co, k, k]);
        let deconv =
            move |x: &Tensor, w: &Tensor| engine::conv_transpose2d(x, w, 2, k / 2, 1).unwrap();
        check_finite_differences(
            &deconv,
            &x,
            &wt,
            &mut rng,
            &format!("deconv {ci}->{co} k{k}"),
        );
    }
}

#[test]
fn fused_batch_norm_matches_the_stock_formulation() {
    let mut rng = Rng::new(104);
    for (b, c, h, w) in [(3, 5, 7, 9), (2, 16, 8, 8), (1, 3, 1, 17)] {
        let x = (rand(&mut rng, &[b, c, h, w]) * 3.0).unwrap();
        let gamma = rand(&mut rng, &[c]);
        let beta = rand(&mut rng, &[c]);
        let r = rand(&mut rng, &[b, c, h, w]);
        // f32 runs the engine's fused op, f64 candle's elementwise ops.
        let run = |dt: DType, relu: bool| {
            let xv = Var::from_tensor(&x.to_dtype(dt).unwrap()).unwrap();
            let gv = Var::from_tensor(&gamma.to_dtype(dt).unwrap()).unwrap();
            let bv = Var::from_tensor(&beta.to_dtype(dt).unwrap()).unwrap();
            let bn = BatchNorm {
                gamma: gv.as_tensor().clone(),
                beta: bv.as_tensor().clone(),
                running_mean: Var::zeros(c, dt, &Device::Cpu).unwrap(),
                running_var: Var::ones(c, dt, &Device::Cpu).unwrap(),
                eps: 1e-5,
            };
            let y = if relu {
                bn.forward_relu_t(xv.as_tensor(), true).unwrap()
            } else {
                bn.forward_t(xv.as_tensor(), true).unwrap()
            };
            let loss = (&y * r.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            vec![
                y,
                g.get(&xv).unwrap().clone(),
                g.get(&gv).unwrap().clone(),
                g.get(&bv).unwrap().clone(),
                bn.running_mean.as_tensor().clone(),
                bn.running_var.as_tensor().clone(),
            ]
        };
        for relu in [false, true] {
            let a = run(DType::F32, relu);
            let e = run(DType::F64, relu);
            for (i, name) in ["y", "dx", "dgamma", "dbeta", "running mean", "running var"]
                .iter()
                .enumerate()
            {
                let d = max_diff(&a[i], &e[i]);
                assert!(
                    d < 1e-4,
                    "{b}x{c}x{h}x{w} relu={relu}: {name} differs by {d}"
                );
            }
        }
    }
}

fn small_cfg(shared: bool) -> ModelConfig {
    let mut cfg = ModelConfig::table3(12, 20, 1, vec!["ok".into(), "defect".into(), "x".into()]);
    cfg.encoder_widths = vec![5, 8, 12];
    cfg.shared_decoder = shared;
    cfg
}

/// Runs `f` with candle's stock ops (on this thread only), then restores the engine.
fn with_stock_ops<R>(f: impl FnOnce() -> R) -> R {
    engine::set_stock_ops(true);
    let r = f();
    engine::set_stock_ops(false);
    r
}

#[test]
fn gcm_training_gradients_match_candle_stock_ops() {
    // The training path (`forward_t(x, true)` + backward) with the engine
    // and with candle's stock ops must agree, for every parameter.
    for shared in [true, false] {
        let (_, vm) = Gcm::init(&small_cfg(shared), 7, &Device::Cpu).unwrap();
        let mut rng = Rng::new(105);
        let x = ((rand(&mut rng, &[3, 1, 12, 20]) + 1.0).unwrap() * 0.5).unwrap();
        let w = rand(&mut rng, &[3, 3]);
        let run = || {
            let vars: HashMap<String, Var> = varmap_tensors(&vm)
                .into_iter()
                .map(|(k, v)| (k, Var::from_tensor(&v.copy().unwrap()).unwrap()))
                .collect();
            let ts = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
            let net = Gcm::new(&small_cfg(shared), vb).unwrap();
            let out = net.forward_t(&x, true).unwrap();
            let loss = (out.scores * &w).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let mut per: Vec<(String, Tensor)> = vars
                .iter()
                .filter_map(|(k, v)| g.get(v).map(|t| (k.clone(), t.clone())))
                .collect();
            per.sort_by(|a, b| a.0.cmp(&b.0));
            per
        };
        let ours = run();
        let stock = with_stock_ops(run);
        assert_eq!(ours.len(), stock.len());
        assert!(ours.len() > 20, "gradients reach every layer");
        for ((name, a), (_, e)) in ours.iter().zip(&stock) {
            let d = max_diff(a, e);
            assert!(
                d < 1e-3,
                "shared={shared}: gradient of {name} differs by {d}"
            );
        }
    }
}

#[test]
fn planned_inference_matches_candle_stock_ops_for_every_batch_mode() {
    for shared in [true, false] {
        let (net, _) = Gcm::init(&small_cfg(shared), 8, &Device::Cpu).unwrap();
        let folded = FoldedGcm::new(&net).unwrap();
        // Batch 1 runs layer by layer across threads, larger batches depth-first
        // per image; each size is planned once and the plan reused.
        for b in [1, 2, 5, 1, 5] {
            let x = Tensor::rand(0f32, 1.0, (b, 1, 12, 20), &Device::Cpu).unwrap();
            let a = folded.forward(&x).unwrap();
            let e = with_stock_ops(|| net.forward_t(&x, false).unwrap());
            assert!(
                max_diff(&a.cwm, &e.cwm) < 1e-4,
                "shared={shared} batch {b}: CWM"
            );
            assert!(
                max_diff(&a.scores, &e.scores) < 1e-4,
                "shared={shared} batch {b}: scores"
            );
        }
    }
}

#[test]
fn bench_reports_images_per_second_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let m = model.to_str().unwrap();
    let out = util::ok(&[
        "bench",
        "--model",
        m,
        "--init",
        "--size",
        "16",
        "--batch",
        "2",
        "--threads",
        "1",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--min-seconds",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0, "{out}");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["input"], serde_json::json!([1, 16, 16]));
    assert_eq!(v["tta"], "none");
    // With symmetry averaging the report says so.
    let out = util::ok(&[
        "bench",
        "--model",
        m,
        "--tta",
        "flips",
        "--iters",
        "1",
        "--min-seconds",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["tta"], "flips", "{out}");
    let err = util::fails(
        &["bench", "--model", m, "--mode", "train", "--tta", "d4"],
        gcm_inspect::error::exit::USAGE,
    );
    assert!(
        err.contains("--tta d4") && err.contains("--mode train"),
        "{err}"
    );
    // A training step on the model just written, in text form.
    let out = util::ok(&[
        "bench",
        "--model",
        m,
        "--mode",
        "train",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--min-seconds",
        "0",
    ]);
    assert!(out.contains("images/s"), "{out}");
}

#[test]
fn bench_on_cuda_without_cuda_support_is_a_device_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let err = util::fails(
        &[
            "bench",
            "--model",
            dir.path().to_str().unwrap(),
            "--device",
            "cuda",
        ],
        gcm_inspect::error::exit::DEVICE,
    );
    assert!(err.contains("built without CUDA support"), "{err}");
}
