//! CPU executor throughput: a whole training step (forward + backward) of the `tiny` demo model
//! at batch 8 × 256 in f32, reported in tokens/s, and the GEMM shapes that dominate it in
//! FLOP/s.
//!
//! `cargo bench --bench cpu_ops` (set `MATMUL_NUM_THREADS` / `RAYON_NUM_THREADS` to pin threads).

use baddata::backend::cpu::Cpu;
use baddata::backend::{Backend, Span};
use baddata::config::ModelConfig;
use baddata::model::{init_params, Model, ParamLayout};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn step(c: &mut Criterion) {
    let cfg = ModelConfig::preset("tiny").expect("tiny preset");
    let (b, t) = (8, 256);
    let lay = ParamLayout::new(&cfg);
    let p = init_params(&cfg, &lay, 1);
    let mut g = vec![0.0f32; p.len()];
    let toks: Vec<u32> = (0..b * (t + 1))
        .map(|i| ((i * 2_654_435_761usize) % cfg.vocab_real) as u32)
        .collect();
    let mut m = Model::new(cfg.clone(), Cpu::<f32>::new()).expect("model");
    let mut grp = c.benchmark_group("tiny_step");
    grp.sample_size(10)
        .measurement_time(Duration::from_secs(15));
    grp.throughput(Throughput::Elements((b * t) as u64));
    grp.bench_function("forward_backward_8x256", |bch| {
        bch.iter(|| {
            m.forward_backward(&p, &mut g, &toks, b, t, false, 1.0)
                .expect("step")
        })
    });
    grp.bench_function("loss_8x256", |bch| {
        bch.iter(|| m.loss(&p, &toks, b, t).expect("loss"))
    });
    grp.finish();
}

fn gemm(c: &mut Criterion) {
    let be = Cpu::<f32>::new();
    let mut grp = c.benchmark_group("gemm_f32");
    grp.sample_size(10).measurement_time(Duration::from_secs(5));
    // (m, k, n) of y = x·Wᵀ at the tiny shape: qkv, gate_up, down, logits.
    for &(m, k, n) in &[
        (2048, 256, 768),
        (2048, 256, 2048),
        (2048, 1024, 256),
        (2048, 256, 4096),
    ] {
        let x = vec![0.5f32; m * k];
        let w = vec![0.25f32; n * k];
        let mut y = vec![0.0f32; m * n];
        grp.throughput(Throughput::Elements((2 * m * k * n) as u64));
        grp.bench_function(format!("{m}x{k}x{n} (elements = FLOP)"), |bch| {
            bch.iter(|| {
                be.matmul_fwd(&mut y, &x, Span::new(&w, 0, n * k), m, k, n)
                    .expect("gemm")
            })
        });
    }
    grp.finish();
}

criterion_group!(benches, step, gemm);
criterion_main!(benches);
