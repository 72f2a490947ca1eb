//! CPU executor throughput: a whole training step (forward + backward) of the `tiny` demo model
//! at batch 8 × 256 in f32, reported in tokens/s, and the GEMM shapes that dominate it in
//! FLOP/s.
//!
//! `cargo bench --bench cpu_ops` (set `RAYON_NUM_THREADS` to pin threads). The
//! `gemm_crates` group compares the `gemm` crate (used by the executor) with `matrixmultiply`..

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

/// One GEMM `C = A·B`: A `[m, k]`, B `[k, n]`, C `[m, n]` row-major (overwritten), A and B
/// addressed by (row stride, column stride).
#[derive(Clone, Copy)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    a: (isize, isize),
    b: (isize, isize),
}

/// Runs `C = A·B` through `matrixmultiply` (`mm = true`) or `gemm` with rayon's pool.
fn one_gemm(mm: bool, s: Case, a: &[f32], b: &[f32], c: &mut [f32]) {
    let Case { m, k, n, .. } = s;
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the slices hold the matrices at the strides given (asserted lengths; every stride
    // set below addresses exactly m·k, k·n and m·n elements); c is a distinct &mut.
    unsafe {
        if mm {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                s.a.0,
                s.a.1,
                b.as_ptr(),
                s.b.0,
                s.b.1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        } else {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                s.a.1,
                s.a.0,
                b.as_ptr(),
                s.b.1,
                s.b.0,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            )
        }
    }
}

/// `matrixmultiply` against `gemm` on the three GEMMs of each linear layer of the demo model
/// (forward `x·Wᵀ`, input gradient `dy·W`, weight gradient `dyᵀ·x`), in FLOP/s.
fn crates(c: &mut Criterion) {
    let mut grp = c.benchmark_group("gemm_crates");
    grp.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    // (rows N, in k, out n) of y = x·Wᵀ: qkv, gate_up, down, logits.
    for &(rows, kin, out) in &[
        (2048, 256, 768),
        (2048, 256, 2048),
        (2048, 1024, 256),
        (2048, 256, 4096),
    ] {
        let (ki, oi) = (kin as isize, out as isize);
        // C = A·B of each GEMM: forward, input gradient, weight gradient.
        let case = |m, k, n, a, b| Case { m, k, n, a, b };
        let cases = [
            ("fwd", case(rows, kin, out, (ki, 1), (1, ki))),
            ("dx", case(rows, out, kin, (oi, 1), (ki, 1))),
            ("dw", case(out, rows, kin, (1, oi), (ki, 1))),
        ];
        let big = rows * kin.max(out) + kin * out;
        let a = vec![0.5f32; big];
        let b = vec![0.25f32; big];
        let mut cm = vec![0.0f32; big.max(rows * out)];
        for (label, s) in cases {
            grp.throughput(Throughput::Elements((2 * s.m * s.k * s.n) as u64));
            for (name, mm) in [("matrixmultiply", true), ("gemm", false)] {
                grp.bench_function(format!("{label} {rows}x{kin}x{out} {name}"), |bch| {
                    bch.iter(|| one_gemm(mm, s, &a, &b, &mut cm))
                });
            }
        }
    }
    grp.finish();
}

criterion_group!(benches, step, gemm, crates);
criterion_main!(benches);
