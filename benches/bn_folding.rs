//! Inference with BatchNorm folded into the convolutions vs the unfolded
//! network in eval mode (same weights, same input).
//!
//! `cargo bench --bench bn_folding`

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gcm_inspect::model::folded::FoldedGcm;
use gcm_inspect::model::{Gcm, ModelConfig};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("bn_folding");
    g.sample_size(20);
    for (size, batch) in [(64usize, 1usize), (64, 32)] {
        let cfg = ModelConfig::table3(size, size, 1, vec!["ok".into(), "defect".into()]);
        let (net, _) = Gcm::init(&cfg, 0, &Device::Cpu).unwrap();
        let folded = FoldedGcm::new(&net).unwrap();
        let x = Tensor::rand(0f32, 1.0, (batch, 1, size, size), &Device::Cpu).unwrap();
        let id = format!("{size}x{size}_b{batch}");
        g.bench_with_input(BenchmarkId::new("unfolded", &id), &x, |b, x| {
            b.iter(|| net.forward_t(x, false).unwrap().scores)
        });
        g.bench_with_input(BenchmarkId::new("folded", &id), &x, |b, x| {
            b.iter(|| folded.forward(x).unwrap().scores)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
