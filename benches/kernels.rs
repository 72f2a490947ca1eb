//! Kernel benchmarks (criterion). On a GPU: the fused AdamW step at OLMo-1B's parameter count
//! (1,176,764,416; halved until it fits in free memory), the grad norm, and a device-to-device
//! copy measured in the same run as the bandwidth ceiling. Rates are decimal GB/s; bytes
//! counted per parameter:
//! - copy: 8 (read 4, write 4)
//! - adamw_step: 28 (read p, g, m, v: 16; write p, m, v: 12), 30 with the bf16 copy (+2)
//! - grad_norm: 4 (read g; the fp64 partials are negligible)
//! - update (grad_norm then adamw_step with bf16 copy): 34
//!
//! Then the training-step kernels at OLMo-1B's shape (N = 8 x 2048 = 16384 rows, D = 2048,
//! F = 8192, V = 50304, dh = 128), fp32, bytes counted as the unavoidable traffic (each input
//! read once, each output written once):
//! - embedding_fwd: 8·N·D (read the rows, write out); embedding_bwd: 4·N·D (dout) + 8·U·D
//!   (read and write the U distinct rows of dwte)
//! - layernorm_fwd: 8·N·D + 8·N; layernorm_fwd_residual: 16·N·D + 8·N (read a, b; write the
//!   sum and out); layernorm_bwd: 12·N·D + 4·N; each in both versions (reread, cached:
//!   `cuda/layernorm.cu`), side by side
//! - swiglu_fwd: 12·N·F; swiglu_bwd: 20·N·F
//! - rope_fwd / rope_bwd: 16·N·D (read and write the q and k thirds in place)
//! - cross_entropy (bf16 logits, as the model stores them): 2·N·V for the loss alone, 4·N·V
//!   with the gradient written over the logits (the kernel reads the row twice; the second read
//!   mostly hits L2)
//!
//! Besides criterion's report, a summary table gives the best-of-5 time per call and the rate
//! against both the measured copy and the 2.84 TB/s copy rate measured on the H100
//! (docs: DESIGN "Working with the GPU machine").
//!
//! Without a GPU one line says the GPU benches are skipped and the CPU reference AdamW is
//! benchmarked at 1M parameters instead, so `cargo bench` works anywhere
//! (`BADDATA_GPU_REQUIRED=1` makes a missing GPU an error instead).
//! Settings: warm-up 1 s, measurement 3 s, 10 samples (override on the command line, e.g.
//! `--measurement-time 5`); `BADDATA_BENCH_PARAMS=N` sets the parameter count.

use std::hint::black_box;
use std::time::Duration;

use anyhow::{anyhow, Result};
use baddata::backend::cuda::adamw::{grad_norm_partials_len, AdamWKernels, Clip};
use baddata::backend::cuda::CudaDevice;
use baddata::optim::adamw::{adamw_reference, AdamWConfig};
use criterion::{Criterion, Throughput};
use cudarc::driver::CudaSlice;
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Device-to-device copy rate measured on the H100 (read + write), bytes/s.
const H100_COPY_BPS: f64 = 2.84e12;
const OLMO_1B_PARAMS: usize = 1_176_764_416;

mod common;

use common::{best_time, criterion, fill, run_benches, timed_launches};

fn main() {
    run_benches(
        criterion(Duration::from_secs(1), Duration::from_secs(3)),
        "GPU benches",
        "the CPU reference AdamW",
        gpu_benches,
        cpu_benches,
    );
}

fn cpu_benches(c: &mut Criterion) {
    let n = 1 << 20;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut p: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let g: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut m: Vec<f32> = (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
    let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(1e-6..1e-2)).collect();
    let args = AdamWConfig::default().step_args(1e-4, 1.0, 10, n / 4);
    let mut group = c.benchmark_group("cpu");
    group.throughput(Throughput::BytesDecimal(28 * n as u64));
    group.bench_function("adamw_reference_1M", |b| {
        b.iter(|| adamw_reference(&mut p, black_box(&g), &mut m, &mut v, &args))
    });
    group.finish();
}

struct Buffers {
    p: CudaSlice<f32>,
    g: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    pb: CudaSlice<bf16>,
    scratch: CudaSlice<f32>,
    norm: CudaSlice<f32>,
    partials: CudaSlice<f64>,
}

fn alloc(be: &CudaDevice, n: usize) -> Result<Buffers> {
    let s = be.stream();
    let e = |e| anyhow!("allocating benchmark buffers for {n} parameters: {e}");
    let mut b = Buffers {
        p: s.alloc_zeros(n).map_err(e)?,
        g: s.alloc_zeros(n).map_err(e)?,
        m: s.alloc_zeros(n).map_err(e)?,
        v: s.alloc_zeros(n).map_err(e)?,
        pb: s.alloc_zeros(n).map_err(e)?,
        scratch: s.alloc_zeros(n).map_err(e)?,
        norm: s.alloc_zeros(1).map_err(e)?,
        partials: s.alloc_zeros(grad_norm_partials_len(n).max(1)).map_err(e)?,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let blk = 1 << 22;
    let mk = |rng: &mut ChaCha8Rng, lo: f32, hi: f32| -> Vec<f32> {
        (0..blk).map(|_| rng.random_range(lo..hi)).collect()
    };
    fill(be, &mut b.p, &mk(&mut rng, -1.0, 1.0))?;
    fill(be, &mut b.g, &mk(&mut rng, -1.0, 1.0))?;
    fill(be, &mut b.m, &mk(&mut rng, -0.1, 0.1))?;
    fill(be, &mut b.v, &mk(&mut rng, 1e-6, 1e-2))?;
    be.synchronize()?;
    Ok(b)
}

fn gpu_benches(c: &mut Criterion, be: &CudaDevice) -> Result<()> {
    println!("GPU benches on {}", be.describe());
    let k = AdamWKernels::new(be)?;
    let (free, _) = be
        .ctx()
        .mem_get_info()
        .map_err(|e| anyhow!("mem_get_info: {e}"))?;
    let mut n = std::env::var("BADDATA_BENCH_PARAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(OLMO_1B_PARAMS);
    // p, g, m, v, scratch: 4 bytes each; bf16 copy 2; keep 10% free.
    while n > 1 << 20 && (n as f64) * 22.0 > free as f64 * 0.9 {
        n /= 2;
    }
    println!("parameters: {n}");
    let mut b = alloc(be, n)?;
    let args = AdamWConfig::default().step_args(1e-4, 1.0, 10, n / 50);
    let s = be.stream().clone();

    // Each closure is one call of the measured operation (asynchronous).
    let mut rows: Vec<(&str, u64, f64)> = Vec::new();
    let mut group = c.benchmark_group("gpu");
    group.sample_size(10);

    macro_rules! bench {
        ($name:expr, $bytes:expr, $body:expr) => {{
            let bytes: u64 = $bytes * n as u64;
            group.throughput(Throughput::BytesDecimal(bytes));
            let mut f = $body;
            group.bench_function($name, |bch| {
                bch.iter_custom(|iters| timed_launches(be, iters, &mut f))
            });
            rows.push(($name, bytes, best_time(be, 10, &mut f)?));
        }};
    }

    bench!("copy_d2d", 8, || -> Result<()> {
        s.memcpy_dtod(&b.g, &mut b.scratch)
            .map_err(|e| anyhow!("copy: {e}"))
    });
    bench!("adamw_step", 28, || -> Result<()> {
        k.step(
            &mut b.p.as_view_mut(),
            &b.g.as_view(),
            &mut b.m.as_view_mut(),
            &mut b.v.as_view_mut(),
            None,
            &args,
            Clip::Host,
        )
    });
    bench!("adamw_step_bf16_copy", 30, || -> Result<()> {
        k.step(
            &mut b.p.as_view_mut(),
            &b.g.as_view(),
            &mut b.m.as_view_mut(),
            &mut b.v.as_view_mut(),
            Some(&mut b.pb.as_view_mut()),
            &args,
            Clip::Host,
        )
    });
    bench!("grad_norm", 4, || -> Result<()> {
        k.grad_norm(&b.g.as_view(), &mut b.partials, &mut b.norm.as_view_mut())
    });
    bench!("update_norm_clip_step_bf16", 34, || -> Result<()> {
        k.grad_norm(&b.g.as_view(), &mut b.partials, &mut b.norm.as_view_mut())?;
        k.step(
            &mut b.p.as_view_mut(),
            &b.g.as_view(),
            &mut b.m.as_view_mut(),
            &mut b.v.as_view_mut(),
            Some(&mut b.pb.as_view_mut()),
            &args,
            Clip::DeviceNorm {
                norm: &b.norm,
                max_norm: 1.0,
            },
        )
    });
    group.finish();

    let copy_bps = rows[0].1 as f64 / rows[0].2;
    // The training-step kernels run now; both summary tables are printed together below.
    drop(b);
    let (op_title, op_rows) = op_benches(c, be)?;
    println!();
    println!("summary ({n} parameters, best of 5 x 10 calls):");
    print_rows(&rows, copy_bps);
    println!();
    println!("{op_title}");
    print_rows(&op_rows, copy_bps);
    Ok(())
}

/// One table row per kernel: ms per call, TB/s, and the rate against the copy measured in this
/// run and against the 2.84 TB/s measured on the H100.
fn print_rows(rows: &[(&str, u64, f64)], copy_bps: f64) {
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>12}",
        "kernel", "ms", "TB/s", "vs copy", "vs 2.84TB/s"
    );
    for (name, bytes, t) in rows {
        let bps = *bytes as f64 / t;
        println!(
            "{:<28} {:>10.3} {:>10.3} {:>11.1}% {:>11.1}%",
            name,
            t * 1e3,
            bps / 1e12,
            100.0 * bps / copy_bps,
            100.0 * bps / H100_COPY_BPS
        );
    }
}

/// Rows of the training-step kernels' summary: (name, bytes per call, best seconds per call).
type OpRows = Vec<(&'static str, u64, f64)>;

/// Training-step kernels at OLMo-1B's shape; returns the title and rows of their summary table.
fn op_benches(c: &mut Criterion, be: &CudaDevice) -> Result<(String, OpRows)> {
    use baddata::backend::cuda::cross_entropy::CrossEntropyKernels;
    use baddata::backend::cuda::embedding::{EmbeddingBwdPlan, EmbeddingKernels};
    use baddata::backend::cuda::layernorm::{LayerNormKernels, LnVersion};
    use baddata::backend::cuda::pointwise::PointwiseKernels;
    use baddata::backend::AttnShape;
    use baddata::model::transformer::rope_table;

    let (n, d, f, v) = (16384usize, 2048usize, 8192usize, 50304usize);
    let shape = AttnShape {
        b: 8,
        t: 2048,
        h: 16,
        dh: 128,
    };
    let s = be.stream().clone();
    let e = |e| anyhow!("allocating op benchmark buffers: {e}");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let blk: Vec<f32> = (0..1 << 22)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let filled = |len: usize| -> Result<CudaSlice<f32>> {
        let mut buf = s.alloc_zeros::<f32>(len).map_err(e)?;
        fill(be, &mut buf, &blk)?;
        Ok(buf)
    };
    let emb = EmbeddingKernels::new(be)?;
    let pw = PointwiseKernels::new(be)?;
    let ce = CrossEntropyKernels::new(be)?;

    let ids_host: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let plan_host = EmbeddingBwdPlan::new(&ids_host, v)?;
    let uniq = plan_host.buckets() as u64;
    let plan = plan_host.upload(&s)?;
    let ids = s.clone_htod(&ids_host).map_err(e)?;
    let mut wte = filled(v * d)?;
    let mut x = filled(n * d)?;
    let mut y = filled(n * d)?;
    let dy = filled(n * d)?;
    let mut mean = filled(n)?;
    let mut rstd = filled(n)?;
    let gu = filled(n * 2 * f)?;
    let mut h = filled(n * f)?;
    let mut qkv = filled(n * 3 * d)?;
    let table_host: Vec<f32> = rope_table(shape.t, shape.dh, 10_000.0)
        .into_iter()
        .map(|a| a as f32)
        .collect();
    let table = s.clone_htod(&table_host).map_err(e)?;
    be.synchronize()?;

    let (nd, nf) = ((n * d) as u64, (n * f) as u64);
    let mut rows: OpRows = Vec::new();
    let mut group = c.benchmark_group("gpu_ops");
    group.sample_size(10);
    macro_rules! bench {
        ($name:expr, $bytes:expr, $body:expr) => {{
            let bytes: u64 = $bytes;
            group.throughput(Throughput::BytesDecimal(bytes));
            let mut f = $body;
            group.bench_function($name, |bch| {
                bch.iter_custom(|iters| timed_launches(be, iters, &mut f))
            });
            rows.push(($name, bytes, best_time(be, 10, &mut f)?));
        }};
    }

    bench!("embedding_fwd", 8 * nd + 4 * n as u64, || -> Result<()> {
        emb.forward(&mut x.as_view_mut(), &ids.as_view(), &wte.as_view(), n, d)
    });
    bench!(
        "embedding_bwd",
        4 * nd + 8 * uniq * d as u64,
        || -> Result<()> { emb.backward(&mut wte.as_view_mut(), &y.as_view(), &plan, d) }
    );
    // Both layernorm versions side by side (same bits; see cuda/layernorm.cu).
    let mut xsum = filled(n * d)?;
    for ver in LnVersion::ALL {
        let ln = LayerNormKernels::with_version(be, ver)?;
        let (fwd, res, bwd) = match ver {
            LnVersion::Reread => (
                "layernorm_fwd (reread)",
                "layernorm_fwd_residual (reread)",
                "layernorm_bwd (reread)",
            ),
            LnVersion::Cached => (
                "layernorm_fwd (cached)",
                "layernorm_fwd_residual (cached)",
                "layernorm_bwd (cached)",
            ),
        };
        bench!(fwd, 8 * nd + 8 * n as u64, || -> Result<()> {
            ln.forward(
                &mut y.as_view_mut(),
                &mut mean.as_view_mut(),
                &mut rstd.as_view_mut(),
                &x.as_view(),
                n,
                d,
                1e-5,
            )
        });
        bench!(res, 16 * nd + 8 * n as u64, || -> Result<()> {
            ln.forward_residual(
                &mut y.as_view_mut(),
                &mut mean.as_view_mut(),
                &mut rstd.as_view_mut(),
                &mut xsum.as_view_mut(),
                &x.as_view(),
                &dy.as_view(),
                n,
                d,
                1e-5,
            )
        });
        bench!(bwd, 12 * nd + 4 * n as u64, || -> Result<()> {
            ln.backward(
                &mut x.as_view_mut(),
                &dy.as_view(),
                &y.as_view(),
                &rstd.as_view(),
                n,
                d,
                false,
            )
        });
    }
    drop(xsum);
    bench!("swiglu_fwd", 12 * nf, || -> Result<()> {
        pw.swiglu_fwd(&mut h.as_view_mut(), &gu.as_view(), n, f)
    });
    let mut dgu = filled(n * 2 * f)?;
    bench!("swiglu_bwd", 20 * nf, || -> Result<()> {
        pw.swiglu_bwd(&mut dgu.as_view_mut(), &h.as_view(), &gu.as_view(), n, f)
    });
    drop(dgu);
    bench!("rope_fwd", 16 * nd, || -> Result<()> {
        pw.rope_fwd(&mut qkv.as_view_mut(), &table.as_view(), shape)
    });
    bench!("rope_bwd", 16 * nd, || -> Result<()> {
        pw.rope_bwd(&mut qkv.as_view_mut(), &table.as_view(), shape)
    });
    // Free the MLP and attention buffers before the [N, V] logits.
    drop(gu);
    drop(qkv);
    drop(h);
    let mut logits = {
        let mut buf = s.alloc_zeros::<bf16>(n * v).map_err(e)?;
        let lblk: Vec<bf16> = (0..1 << 22)
            .map(|_| bf16::from_f32(rng.random_range(-8.0f32..8.0)))
            .collect();
        fill(be, &mut buf, &lblk)?;
        buf
    };
    let targets = s.clone_htod(&ids_host).map_err(e)?;
    let mut losses = filled(n)?;
    let nv = (n * v) as u64;
    bench!("cross_entropy_loss", 2 * nv, || -> Result<()> {
        ce.forward_backward(
            &mut logits.as_view_mut(),
            &mut losses.as_view_mut(),
            &targets.as_view(),
            n,
            v,
            None,
        )
    });
    bench!("cross_entropy_loss_grad", 4 * nv, || -> Result<()> {
        ce.forward_backward(
            &mut logits.as_view_mut(),
            &mut losses.as_view_mut(),
            &targets.as_view(),
            n,
            v,
            Some(1.0 / n as f32),
        )
    });
    group.finish();
    let title = format!(
        "summary of the training-step kernels (OLMo-1B shape: N={n} D={d} F={f} V={v}, {uniq} \
         distinct ids; fp32, bf16 logits; best of 5 x 10 calls):"
    );
    Ok((title, rows))
}
