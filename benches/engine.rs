//! Criterion benchmarks of the CPU engine: single layers of the Table 3 GCM
//! (64x64 input) and the whole network, engine against candle's stock ops.
//! `cargo bench --bench engine`; the cross-runtime comparison is
//! `scripts/bench-cpu.sh`.

use candle_core::{DType, Device, Tensor, D};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gcm_inspect::engine;
use gcm_inspect::model::config::ModelConfig;
use gcm_inspect::model::folded::FoldedGcm;
use gcm_inspect::model::gcm::Gcm;

fn layers(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("layer-b32");
    g.sample_size(10);
    // (name, cin, cout, size, stride, deconv)
    for (name, ci, co, s, stride, deconv) in [
        ("conv3x3-16-16-64", 16, 16, 64, 1, false),
        ("conv3x3-16-32-64-s2", 16, 32, 64, 2, false),
        ("conv3x3-64-64-16", 64, 64, 16, 1, false),
        ("deconv3x3-32-16-32", 32, 16, 32, 2, true),
    ] {
        let x = Tensor::rand(-1f32, 1.0, (32, ci, s, s), &dev).unwrap();
        let w = if deconv {
            Tensor::rand(-1f32, 1.0, (ci, co, 3, 3), &dev).unwrap()
        } else {
            Tensor::rand(-1f32, 1.0, (co, ci, 3, 3), &dev).unwrap()
        };
        for stock in [false, true] {
            let id = BenchmarkId::new(name, if stock { "candle-stock" } else { "engine" });
            g.bench_function(id, |b| {
                engine::set_stock_ops(stock);
                b.iter(|| {
                    if deconv {
                        engine::conv_transpose2d(&x, &w, 2, 1, 1).unwrap()
                    } else {
                        engine::conv2d(&x, &w, stride, 1).unwrap()
                    }
                });
                engine::set_stock_ops(false);
            });
        }
    }
    g.finish();
}

fn network(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = ModelConfig::table3(64, 64, 1, vec!["ok".into(), "defect".into()]);
    let (net, vm) = Gcm::init(&cfg, 0, &dev).unwrap();
    let folded = FoldedGcm::new(&net).unwrap();
    let mut g = c.benchmark_group("gcm-64x64");
    g.sample_size(10);
    for batch in [1usize, 32] {
        let x = Tensor::rand(0f32, 1.0, (batch, 1, 64, 64), &dev).unwrap();
        g.bench_function(BenchmarkId::new("infer", batch), |b| {
            b.iter(|| folded.forward(&x).unwrap().scores.to_vec2::<f32>().unwrap())
        });
    }
    let x = Tensor::rand(0f32, 1.0, (32, 1, 64, 64), &dev).unwrap();
    let labels = Tensor::from_vec((0..32u32).map(|i| i % 2).collect(), 32, &dev).unwrap();
    let vars: Vec<_> = net.trainable(&vm).into_iter().map(|t| t.1).collect();
    g.bench_function(BenchmarkId::new("train-step", 32), |b| {
        b.iter(|| {
            let out = net.forward_t(&x, true).unwrap();
            let logp = candle_nn::ops::log_softmax(&out.scores, D::Minus1).unwrap();
            let loss = candle_nn::loss::nll(&logp, &labels).unwrap();
            let grads = loss.backward().unwrap();
            // The SGD update, as `train` does it.
            for v in &vars {
                if let Some(gr) = grads.get(v) {
                    v.set(&(v.as_tensor() - (gr * 0.01).unwrap()).unwrap())
                        .unwrap();
                }
            }
            loss.to_dtype(DType::F32)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, layers, network);
criterion_main!(benches);
