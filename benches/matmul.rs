//! Matmul benchmarks (criterion). On a GPU: the tensor-core kernels of `cuda/matmul.cu` on the
//! five linear layers of OLMo-1B at its training shape (N = 8 x 2048 = 16384 token rows):
//!
//! | layer   | k (in) | n (out) |
//! |---------|--------|---------|
//! | qkv     | 2048   | 6144    |
//! | o       | 2048   | 2048    |
//! | gate_up | 2048   | 16384   |
//! | down    | 8192   | 2048    |
//! | logits  | 2048   | 50304   |
//!
//! each as forward (`y = x·Wᵀ`), input gradient (`dx = dy·W`) and weight gradient
//! (`dW += dyᵀ·x`, accumulate on, as in training). As in training, the logits layer's `y` and
//! `dy` are bf16 (the `_bf16` kernel variants); every other operand is fp32. Every product counts 2·N·n·k flops. A summary
//! table (after a line starting with "summary") gives the best-of-5 time per call and TFLOP/s
//! against the 798 TFLOP/s measured for cuBLAS bf16 (PyTorch, 8192³) and the 989 TFLOP/s
//! datasheet peak of the H100, and for forward rows PyTorch 2.11's own rate on that layer
//! (DESIGN's per-op table, measured on the H100 with bf16 operands; our operands are fp32 in
//! memory, rounded to bf16 on the way into shared memory).
//!
//! Both kernel versions ([`MmVersion`]: `staged`, fp32 operands rounded as they are staged, and
//! `async`, bf16 operand copies through a 4-stage cp.async pipeline, the copies' time included)
//! run on every product, side by side: criterion names the async ones `*_async`, and the
//! summary has a version column and the async/staged speedup per product.
//!
//! Without a GPU one line says the GPU benches are skipped and the CPU reference GEMM
//! (`backend::cpu::matmul::forward`, f32) is benchmarked at 256³ instead, so `cargo bench` works
//! anywhere (`BADDATA_GPU_REQUIRED=1` makes a missing GPU an error instead).
//! Settings: warm-up 0.5 s, measurement 1 s, 10 samples (override on the command line, e.g.
//! `--measurement-time 5`).

use std::hint::black_box;
use std::time::Duration;

use anyhow::{anyhow, Result};
use baddata::backend::cpu::matmul as cpu_mm;
use baddata::backend::cuda::matmul::{MatmulKernels, MmElem, MmVersion};
use baddata::backend::cuda::CudaDevice;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// bf16 GEMM rate measured on the H100 (cuBLAS via PyTorch, 8192³), flop/s.
const H100_MEASURED: f64 = 798e12;
/// H100 SXM datasheet dense bf16 peak, flop/s.
const H100_DATASHEET: f64 = 989e12;
/// Token rows at OLMo-1B's training shape (8 x 2048).
const ROWS: usize = 16384;

/// (layer, k, n, PyTorch 2.11 forward TFLOP/s on the H100 from DESIGN's per-op table).
const LAYERS: [(&str, usize, usize, f64); 5] = [
    ("qkv", 2048, 6144, 781.0),
    ("o", 2048, 2048, 712.0),
    ("gate_up", 2048, 16384, 669.0),
    ("down", 8192, 2048, 713.0),
    ("logits", 2048, 50304, 664.0),
];

mod common;

use common::{best_time, criterion, fill, run_benches, timed_launches};

fn main() {
    run_benches(
        criterion(Duration::from_millis(500), Duration::from_secs(1)),
        "GPU matmul benches",
        "the CPU reference matmul at 256x256x256",
        gpu_benches,
        cpu_benches,
    );
}

fn cpu_benches(c: &mut Criterion) {
    let (m, k, n) = (256usize, 256usize, 256usize);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut y = vec![0f32; m * n];
    let mut group = c.benchmark_group("cpu");
    group.throughput(Throughput::Elements((2 * m * n * k) as u64));
    group.bench_function("matmul_fwd_reference_256", |b| {
        b.iter(|| cpu_mm::forward(&mut y, black_box(&x), black_box(&w), m, k, n))
    });
    group.finish();
}

/// One summary row: (op, layer, version, k, n, flops per call, best seconds per call, PyTorch
/// TFLOP/s).
type Row = (
    &'static str,
    &'static str,
    MmVersion,
    usize,
    usize,
    f64,
    f64,
    Option<f64>,
);

/// The version's name in the summary and its suffix in criterion's bench names.
fn version_name(v: MmVersion) -> (&'static str, &'static str) {
    match v {
        MmVersion::Staged => ("staged", ""),
        MmVersion::Async => ("async", "_async"),
        MmVersion::Auto => ("auto", "_auto"),
    }
}

/// One linear layer's shape and buffers.
struct Layer {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    torch: f64,
    x: CudaSlice<f32>,
    w: CudaSlice<f32>,
    dx: CudaSlice<f32>,
    dw: CudaSlice<f32>,
}

/// Benchmarks one layer's three products, with `y` / `dy` of element type `Y`; the forward
/// writes the `y` that the two backward products then read as `dy`.
fn bench_layer<Y: MmElem + cudarc::driver::ValidAsZeroBits>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rows: &mut Vec<Row>,
    be: &CudaDevice,
    mm: &MatmulKernels,
    mut l: Layer,
) -> Result<()> {
    let (m, k, n) = (l.m, l.k, l.n);
    let mut y = be
        .stream()
        .alloc_zeros::<Y>(m * n)
        .map_err(|e| anyhow!("allocating y: {e}"))?;
    be.synchronize()?;
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    group.throughput(Throughput::Elements(flops as u64));
    let layer = l.name;
    let version = mm.version();
    let suffix = version_name(version).1;
    macro_rules! bench {
        ($op:expr, $torch:expr, $body:expr) => {{
            let mut f = $body;
            group.bench_function(format!("{}_{layer}{suffix}", $op), |bch| {
                bch.iter_custom(|iters| timed_launches(be, iters, &mut f))
            });
            let t = best_time(be, 5, &mut f)?;
            rows.push(($op, layer, version, k, n, flops, t, $torch));
        }};
    }
    bench!("fwd", Some(l.torch), || -> Result<()> {
        mm.forward(
            &mut y.as_view_mut(),
            &l.x.as_view(),
            &l.w.as_view(),
            m,
            k,
            n,
        )
    });
    bench!("bwd_x", None, || -> Result<()> {
        mm.backward_x(
            &mut l.dx.as_view_mut(),
            &y.as_view(),
            &l.w.as_view(),
            m,
            k,
            n,
        )
    });
    bench!("bwd_w", None, || -> Result<()> {
        mm.backward_w(
            &mut l.dw.as_view_mut(),
            &y.as_view(),
            &l.x.as_view(),
            m,
            k,
            n,
            true,
        )
    });
    Ok(())
}

fn gpu_benches(c: &mut Criterion, be: &CudaDevice) -> Result<()> {
    println!("GPU matmul benches on {}", be.describe());
    let s = be.stream().clone();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let blk: Vec<f32> = (0..1 << 22)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let filled = |len: usize| -> Result<CudaSlice<f32>> {
        let mut buf = s
            .alloc_zeros::<f32>(len)
            .map_err(|e| anyhow!("allocating {len} floats: {e}"))?;
        fill(be, &mut buf, &blk)?;
        Ok(buf)
    };
    let m = ROWS;
    let mut rows: Vec<Row> = Vec::new();
    let mut group = c.benchmark_group("gpu_matmul");
    group.sample_size(10);
    for &(layer, k, n, torch) in &LAYERS {
        for version in MmVersion::ALL {
            let mm = MatmulKernels::with_version(be, version)?;
            // Per layer: x [m, k], W [n, k], y = dy [m, n] (bf16 for the logits), dx [m, k],
            // dW [n, k].
            let l = Layer {
                name: layer,
                m,
                k,
                n,
                torch,
                x: filled(m * k)?,
                w: filled(n * k)?,
                dx: filled(m * k)?,
                dw: filled(n * k)?,
            };
            if layer == "logits" {
                bench_layer::<half::bf16>(&mut group, &mut rows, be, &mm, l)?;
            } else {
                bench_layer::<f32>(&mut group, &mut rows, be, &mm, l)?;
            }
        }
    }
    group.finish();

    println!();
    println!(
        "summary (N = {m} token rows, best of 5 x 5 calls; fp32 in memory except the bf16 \
         logits, bf16 tensor cores):"
    );
    println!(
        "{:<7} {:<8} {:<7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>13} {:>8}",
        "op",
        "layer",
        "version",
        "k",
        "n",
        "ms",
        "TFLOP/s",
        "vs 798",
        "vs 989",
        "PyTorch fwd",
        "speedup"
    );
    let mut totals = Vec::new();
    for version in MmVersion::ALL {
        let (mut total_flops, mut total_s) = (0.0, 0.0);
        for &(op, layer, v, k, n, flops, t, torch) in rows.iter().filter(|r| r.2 == version) {
            let rate = flops / t;
            total_flops += flops;
            total_s += t;
            let torch_col = match torch {
                Some(tf) => format!("{tf:.0} ({:.0}%)", 100.0 * rate / (tf * 1e12)),
                None => "-".to_string(),
            };
            // staged time / this version's time, for the same product
            let speedup = rows
                .iter()
                .find(|r| r.0 == op && r.1 == layer && r.2 == MmVersion::Staged)
                .map_or(String::new(), |r| format!("{:.2}x", r.6 / t));
            println!(
                "{:<7} {:<8} {:<7} {:>6} {:>6} {:>9.3} {:>9.1} {:>8.1}% {:>8.1}% {:>13} {:>8}",
                op,
                layer,
                version_name(v).0,
                k,
                n,
                t * 1e3,
                rate / 1e12,
                100.0 * rate / H100_MEASURED,
                100.0 * rate / H100_DATASHEET,
                torch_col,
                speedup
            );
        }
        totals.push((version, total_flops, total_s));
    }
    let staged_s = totals[0].2;
    for (version, total_flops, total_s) in totals {
        let rate = total_flops / total_s;
        println!(
            "{:<7} {:<8} {:<7} {:>6} {:>6} {:>9.3} {:>9.1} {:>8.1}% {:>8.1}% {:>13} {:>7.2}x",
            "all",
            "15 ops",
            version_name(version).0,
            "",
            "",
            total_s * 1e3,
            rate / 1e12,
            100.0 * rate / H100_MEASURED,
            100.0 * rate / H100_DATASHEET,
            "",
            staged_s / total_s
        );
    }
    Ok(())
}
