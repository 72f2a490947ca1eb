//! Flash-attention benchmarks (criterion). On a GPU, the causal forward and backward of
//! `cuda/attention.cu` at OLMo-1B's shape (B 8, T 2048, H 16, dh 128) and OLMo-124M's
//! (B 64, T 1024, H 12, dh 64), fp32 buffers, bf16 tensor-core products.
//!
//! FLOPs counted (causal: half of the T×T score matrix):
//! - forward: 4·B·H·T²·dh / 2 (Q·Kᵀ and P·V, 2 FLOPs per multiply-add, each over half the
//!   matrix);
//! - backward: 2.5 × the forward (five products of the same size: Q·Kᵀ recomputed, dZ·Vᵀ,
//!   dS·K, dSᵀ·Q, Pᵀ·dZ), the usual FlashAttention convention. Our dQ kernel recomputes Q·Kᵀ and
//!   dZ·Vᵀ a second time; that extra work is not counted.
//!
//! The summary table after a line starting with "summary" gives the best-of-5 time per call
//! (10 calls each) and TFLOP/s against the H100's ceilings (DESIGN, "Working with the GPU
//! machine"): 989 TFLOP/s datasheet bf16 dense, 798 measured (cuBLAS bf16 GEMM), and PyTorch
//! SDPA at OLMo-1B's shape, 499 (forward) and 379 (backward) TFLOP/s.
//!
//! Without a GPU one line says the GPU benches are skipped and the CPU reference
//! (`baddata::backend::cpu::attention`, f32) is benchmarked on a small shape instead
//! (`BADDATA_GPU_REQUIRED=1` makes a missing GPU an error). Settings: warm-up 1 s,
//! measurement 3 s, 10 samples (override on the command line).

use std::time::Duration;

use anyhow::{anyhow, Result};
use baddata::backend::cpu::attention as cpu_attn;
use baddata::backend::cuda::attention::AttentionKernels;
use baddata::backend::cuda::CudaDevice;
use baddata::backend::AttnShape;
use criterion::{Criterion, Throughput};
use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// bf16 dense tensor-core peak of the H100 SXM (datasheet), FLOP/s.
const PEAK_FLOPS: f64 = 989e12;
/// bf16 GEMM measured on the H100 (cuBLAS via PyTorch, 8192³), FLOP/s.
const GEMM_FLOPS: f64 = 798e12;
/// PyTorch SDPA at OLMo-1B's shape on the H100: forward and backward, FLOP/s.
const SDPA_FWD_FLOPS: f64 = 499e12;
const SDPA_BWD_FLOPS: f64 = 379e12;

mod common;

use common::{best_time, criterion, run_benches, timed_launches};

fn main() {
    run_benches(
        criterion(Duration::from_secs(1), Duration::from_secs(3)),
        "GPU attention benches",
        "the CPU reference",
        gpu_benches,
        cpu_benches,
    );
}

/// Causal forward FLOPs: 4·B·H·T²·dh / 2.
fn fwd_flops(s: AttnShape) -> f64 {
    4.0 * (s.b * s.h) as f64 * (s.t as f64).powi(2) * s.dh as f64 / 2.0
}

/// Random qkv (q, k in ±√6: scaled scores of standard deviation about 2; v in ±1) and dz in ±1.
fn host_inputs(s: AttnShape, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, d) = (s.n(), s.d());
    let a = 6f32.sqrt();
    let mut qkv = Vec::with_capacity(n * 3 * d);
    for _ in 0..n {
        qkv.extend((0..2 * d).map(|_| rng.random_range(-a..a)));
        qkv.extend((0..d).map(|_| rng.random_range(-1.0f32..1.0)));
    }
    let dz = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    (qkv, dz)
}

fn cpu_benches(c: &mut Criterion) {
    let s = AttnShape {
        b: 1,
        t: 256,
        h: 4,
        dh: 64,
    };
    let (qkv, dz) = host_inputs(s, 1);
    let mut z = vec![0f32; s.n() * s.d()];
    let mut lse = vec![0f32; s.b * s.h * s.t];
    let mut dqkv = vec![0f32; s.n() * 3 * s.d()];
    let mut group = c.benchmark_group("cpu_attention");
    group.throughput(Throughput::Elements(fwd_flops(s) as u64));
    group.bench_function("fwd_b1_t256_h4_d64", |b| {
        b.iter(|| cpu_attn::forward(&mut z, &mut lse, &qkv, s))
    });
    group.throughput(Throughput::Elements((2.5 * fwd_flops(s)) as u64));
    group.bench_function("bwd_b1_t256_h4_d64", |b| {
        b.iter(|| cpu_attn::backward(&mut dqkv, &dz, &z, &qkv, &lse, s))
    });
    group.finish();
}

/// One summary row: name, FLOPs per call, best seconds per call, the SDPA rate to compare with
/// (only at OLMo-1B's shape).
type Row = (String, f64, f64, Option<f64>);

fn gpu_benches(c: &mut Criterion, be: &CudaDevice) -> Result<()> {
    println!("GPU attention benches on {}", be.describe());
    let k = AttentionKernels::new(be)?;
    let shapes = [
        (
            "olmo1b",
            AttnShape {
                b: 8,
                t: 2048,
                h: 16,
                dh: 128,
            },
            true,
        ),
        (
            "olmo124m",
            AttnShape {
                b: 64,
                t: 1024,
                h: 12,
                dh: 64,
            },
            false,
        ),
    ];
    let mut rows: Vec<Row> = Vec::new();
    let st = be.stream();
    let e = |e| anyhow!("allocating attention benchmark buffers: {e}");
    let mut group = c.benchmark_group("gpu_attention");
    group.sample_size(10);
    for (name, s, sdpa) in shapes {
        let (n, d) = (s.n(), s.d());
        let (qkv_h, dz_h) = host_inputs(s, 2);
        let qkv: CudaSlice<f32> = st.clone_htod(&qkv_h).map_err(e)?;
        let dz: CudaSlice<f32> = st.clone_htod(&dz_h).map_err(e)?;
        let mut z: CudaSlice<f32> = st.alloc_zeros(n * d).map_err(e)?;
        let mut lse: CudaSlice<f32> = st.alloc_zeros(s.b * s.h * s.t).map_err(e)?;
        let mut dqkv: CudaSlice<f32> = st.alloc_zeros(n * 3 * d).map_err(e)?;
        be.synchronize()?;
        let ff = fwd_flops(s);

        let mut fwd = || {
            k.forward(
                &mut z.slice_mut(..),
                &mut lse.slice_mut(..),
                &qkv.slice(..),
                s,
                None,
            )
        };
        group.throughput(Throughput::Elements(ff as u64));
        group.bench_function(format!("fwd_{name}"), |bch| {
            bch.iter_custom(|iters| timed_launches(be, iters, &mut fwd))
        });
        rows.push((
            format!("fwd {name}"),
            ff,
            best_time(be, 10, &mut fwd)?,
            sdpa.then_some(SDPA_FWD_FLOPS),
        ));

        // The backward reads the forward's z and lse (computed by the last forward call).
        let mut bwd = || {
            k.backward(
                &mut dqkv.slice_mut(..),
                &dz.slice(..),
                &z.slice(..),
                &qkv.slice(..),
                &lse.slice(..),
                s,
            )
        };
        group.throughput(Throughput::Elements((2.5 * ff) as u64));
        group.bench_function(format!("bwd_{name}"), |bch| {
            bch.iter_custom(|iters| timed_launches(be, iters, &mut bwd))
        });
        rows.push((
            format!("bwd {name}"),
            2.5 * ff,
            best_time(be, 10, &mut bwd)?,
            sdpa.then_some(SDPA_BWD_FLOPS),
        ));
    }
    group.finish();

    println!();
    println!(
        "summary (causal attention, best of 5 x 10 calls; olmo1b = B 8 T 2048 H 16 dh 128, \
         olmo124m = B 64 T 1024 H 12 dh 64; bwd FLOPs = 2.5 x fwd)"
    );
    println!(
        "{:<14} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "op", "ms", "TFLOP/s", "% of 989", "% of 798", "vs SDPA"
    );
    for (name, flops, secs, sdpa) in rows {
        let rate = flops / secs;
        let vs = sdpa.map_or_else(|| "-".to_string(), |r| format!("{:.2}x", rate / r));
        println!(
            "{:<14} {:>10.3} {:>10.1} {:>8.1}% {:>8.1}% {:>9}",
            name,
            secs * 1e3,
            rate / 1e12,
            100.0 * rate / PEAK_FLOPS,
            100.0 * rate / GEMM_FLOPS,
            vs
        );
    }
    Ok(())
}
