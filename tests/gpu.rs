//! GPU kernels against their CPU references.
//!
//! Every test is always registered. Without a usable GPU (no kernels compiled, no libcuda, no
//! device, or no binary for it) they are reported as *ignored*, never as passed; with
//! `BADDATA_GPU_REQUIRED=1` (set on the GPU machine) a missing GPU fails the whole run instead.
//!
//! Inputs are fresh random values (never zeros), several sizes including ragged ones; outputs
//! are poisoned with NaN before each launch; buffers carry guard elements on both sides that
//! must come back untouched; both the vectorised (aligned) and the scalar (unaligned view) paths
//! are run.

use anyhow::{anyhow, ensure, Result};
use baddata::backend::cpu::{
    cross_entropy as cpu_ce, embedding as cpu_emb, layernorm as cpu_ln, pointwise as cpu_pw,
};
use baddata::backend::cuda::adamw::{grad_norm_partials_len, AdamWKernels, Clip};
use baddata::backend::cuda::cross_entropy::CrossEntropyKernels;
use baddata::backend::cuda::embedding::{EmbeddingBwdPlan, EmbeddingKernels};
use baddata::backend::cuda::layernorm::{LayerNormKernels, LnVersion};
use baddata::backend::cuda::pointwise::PointwiseKernels;
use baddata::backend::cuda::CudaDevice;
use baddata::backend::{AttnShape, StepArgs};
use baddata::model::transformer::rope_table;
use baddata::optim::adamw::{adamw_reference, clip_scale, global_norm, AdamW, AdamWConfig};
use baddata::optim::cuda::CudaAdamW;
use cudarc::driver::CudaSlice;
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "common/gpu.rs"]
mod gpu_common;

use gpu_common::{
    bf16_oracle_rounds_to_nearest_even, bits, check_bf16_close, check_bits, download_guarded,
    host_test, rel_err, rel_err64, rne_bf16, run_gpu_tests, uniform, upload_guarded, GpuTest,
    GUARD as GUARD_F32,
};

struct Gpu {
    be: CudaDevice,
    k: AdamWKernels,
}

fn main() {
    let tests: [(&str, GpuTest<Gpu>); 17] = [
        ("adamw_matches_cpu_reference", adamw_matches_cpu_reference),
        (
            "adamw_bit_exact_with_host_clip_scale",
            adamw_bit_exact_with_host_clip_scale,
        ),
        (
            "grad_norm_matches_global_norm",
            grad_norm_matches_global_norm,
        ),
        (
            "cuda_adamw_update_matches_host_adamw",
            cuda_adamw_update_matches_host_adamw,
        ),
        ("two_runs_bit_identical", two_runs_bit_identical),
        (
            "adamw_rejects_mismatched_lengths",
            adamw_rejects_mismatched_lengths,
        ),
        ("embedding_fwd_matches_cpu", embedding_fwd_matches_cpu),
        (
            "embedding_bwd_matches_cpu_bit_exact",
            embedding_bwd_matches_cpu_bit_exact,
        ),
        ("layernorm_fwd_matches_cpu", layernorm_fwd_matches_cpu),
        ("layernorm_bwd_matches_cpu", layernorm_bwd_matches_cpu),
        (
            "layernorm_fwd_residual_matches_cpu",
            layernorm_fwd_residual_matches_cpu,
        ),
        ("swiglu_matches_cpu", swiglu_matches_cpu),
        ("rope_matches_cpu", rope_matches_cpu),
        ("cross_entropy_matches_cpu", cross_entropy_matches_cpu),
        (
            "layernorm_versions_bit_identical",
            layernorm_versions_bit_identical,
        ),
        (
            "reductions_bit_identical_across_runs",
            reductions_bit_identical_across_runs,
        ),
        (
            "kernel_launchers_reject_short_buffers",
            kernel_launchers_reject_short_buffers,
        ),
    ];
    let host_tests = vec![
        host_test(
            "bf16_oracle_rounds_to_nearest_even",
            bf16_oracle_rounds_to_nearest_even,
        ),
        host_test(
            "embedding_plan_groups_positions_by_id",
            embedding_plan_groups_positions_by_id,
        ),
    ];
    let setup = || {
        let be = CudaDevice::open(0)?;
        let k = AdamWKernels::new(&be)?;
        let device = be.describe();
        Ok((Gpu { be, k }, device))
    };
    run_gpu_tests("gpu", setup, host_tests, &tests)
}

// ---------------------------------------------------------------------------------------------
// helpers

const SIZES: [usize; 4] = [1, 1000, 4097, (1 << 20) + 3];
const GUARD_BF16: u16 = 0x1234;
const NAN_BF16: u16 = 0x7fc0;

/// Gradients with magnitudes spread over four decades, signs mixed, never zero.
fn grads(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mag = 10f32.powf(rng.random_range(-3.0..1.0));
            if rng.random_bool(0.5) {
                mag
            } else {
                -mag
            }
        })
        .collect()
}

/// Fresh optimizer inputs: params in (-1, 1), m in (-0.1, 0.1), v in (1e-6, 1e-2).
struct State {
    p: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

fn state(rng: &mut ChaCha8Rng, n: usize) -> State {
    State {
        p: uniform(rng, n, -1.0, 1.0),
        m: uniform(rng, n, -0.1, 0.1),
        v: uniform(rng, n, 1e-6, 1e-2),
    }
}

/// Bits of (params, m, v, bf16 params, grad norm) after a run.
type RunBits = (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u16>, u32);

// ---------------------------------------------------------------------------------------------
// tests

/// Three steps of the fused kernel (clip scale from the device norm: clipping, not clipping,
/// clipping off) against `adamw_reference` with the host-computed clip scale, at each size,
/// aligned and unaligned; fp32 outputs within 1e-5 relative, the bf16 copy equal to the RNE
/// rounding of the kernel's fp32 params.
fn adamw_matches_cpu_reference(gpu: &Gpu) -> Result<()> {
    let cfg = AdamWConfig::default();
    let s = gpu.be.stream();
    for &n in &SIZES {
        for off in [0usize, 1] {
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + n as u64 * 2 + off as u64);
            let no_decay = n / 3;
            let mut st = state(&mut rng, n);
            let mut dp = upload_guarded(&gpu.be, &st.p, off, GUARD_F32)?;
            let mut dm = upload_guarded(&gpu.be, &st.m, off, GUARD_F32)?;
            let mut dv = upload_guarded(&gpu.be, &st.v, off, GUARD_F32)?;
            let mut dnorm = s.clone_htod(&[f32::NAN]).map_err(|e| anyhow!("{e}"))?;
            let mut partials = s
                .clone_htod(&vec![f64::NAN; grad_norm_partials_len(n).max(1)])
                .map_err(|e| anyhow!("{e}"))?;
            let lrs = [1e-3f32, 5e-4, 2e-4];
            for (t, &lr) in lrs.iter().enumerate() {
                let g = grads(&mut rng, n);
                let gnorm = global_norm(&g);
                let max_norm = [0.5 * gnorm, 2.0 * gnorm, 0.0][t];
                let dg = upload_guarded(&gpu.be, &g, off, GUARD_F32)?;
                let mut db = upload_guarded(
                    &gpu.be,
                    &vec![bf16::from_bits(NAN_BF16); n],
                    off,
                    bf16::from_bits(GUARD_BF16),
                )?;
                s.memcpy_htod(&[f32::NAN], &mut dnorm)
                    .map_err(|e| anyhow!("{e}"))?;
                gpu.k.grad_norm(
                    &dg.slice(off..off + n),
                    &mut partials,
                    &mut dnorm.as_view_mut(),
                )?;
                let args = cfg.step_args(lr, f32::NAN, t as u64 + 1, no_decay);
                gpu.k.step(
                    &mut dp.slice_mut(off..off + n),
                    &dg.slice(off..off + n),
                    &mut dm.slice_mut(off..off + n),
                    &mut dv.slice_mut(off..off + n),
                    Some(&mut db.slice_mut(off..off + n)),
                    &args,
                    Clip::DeviceNorm {
                        norm: &dnorm,
                        max_norm,
                    },
                )?;
                let host_args = StepArgs {
                    clip_scale: clip_scale(gnorm, max_norm),
                    ..args
                };
                adamw_reference(&mut st.p, &g, &mut st.m, &mut st.v, &host_args);

                let ctx = format!("n={n} offset={off} step={}", t + 1);
                let gp = download_guarded(&gpu.be, &dp, off, n, GUARD_F32, "params")?;
                let gm = download_guarded(&gpu.be, &dm, off, n, GUARD_F32, "m")?;
                let gv = download_guarded(&gpu.be, &dv, off, n, GUARD_F32, "v")?;
                let gb = download_guarded(
                    &gpu.be,
                    &db,
                    off,
                    n,
                    bf16::from_bits(GUARD_BF16),
                    "bf16 params",
                )?;
                for (what, got, want) in
                    [("params", &gp, &st.p), ("m", &gm, &st.m), ("v", &gv, &st.v)]
                {
                    ensure!(
                        got.iter().all(|x| x.is_finite()),
                        "{ctx}: {what} has non-finite values"
                    );
                    let e = rel_err(got, want);
                    ensure!(e < 1e-5, "{ctx}: {what} relative error {e:e} >= 1e-5");
                }
                for i in 0..n {
                    ensure!(
                        gb[i].to_bits() == rne_bf16(gp[i]),
                        "{ctx}: bf16 copy [{i}] = {:#06x}, RNE of {} is {:#06x}",
                        gb[i].to_bits(),
                        gp[i],
                        rne_bf16(gp[i])
                    );
                }
                // The kernel continues from its own state, as training would.
                st.p = gp;
                st.m = gm;
                st.v = gv;
            }
        }
    }
    Ok(())
}

/// With the clip scale given by the host, the kernel performs the reference's IEEE fp32
/// operations in the same order: params, m and v agree bit for bit.
fn adamw_bit_exact_with_host_clip_scale(gpu: &Gpu) -> Result<()> {
    let cfg = AdamWConfig::default();
    for &n in &[4097usize, (1 << 20) + 3] {
        let mut rng = ChaCha8Rng::seed_from_u64(77 + n as u64);
        let no_decay = n / 5;
        let mut st = state(&mut rng, n);
        let mut dp = upload_guarded(&gpu.be, &st.p, 0, GUARD_F32)?;
        let mut dm = upload_guarded(&gpu.be, &st.m, 0, GUARD_F32)?;
        let mut dv = upload_guarded(&gpu.be, &st.v, 0, GUARD_F32)?;
        for t in 1..=3u64 {
            let g = grads(&mut rng, n);
            let dg = upload_guarded(&gpu.be, &g, 0, GUARD_F32)?;
            let args = cfg.step_args(3e-4 * t as f32, 0.7, t, no_decay);
            gpu.k.step(
                &mut dp.slice_mut(0..n),
                &dg.slice(0..n),
                &mut dm.slice_mut(0..n),
                &mut dv.slice_mut(0..n),
                None,
                &args,
                Clip::Host,
            )?;
            adamw_reference(&mut st.p, &g, &mut st.m, &mut st.v, &args);
            for (what, buf, want) in [("params", &dp, &st.p), ("m", &dm, &st.m), ("v", &dv, &st.v)]
            {
                let got = download_guarded(&gpu.be, buf, 0, n, GUARD_F32, what)?;
                let diff = got
                    .iter()
                    .zip(want.iter())
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                ensure!(diff == 0, "n={n} step={t}: {what}: {diff} of {n} elements differ in bits from the CPU reference");
            }
        }
    }
    Ok(())
}

/// The two-level device norm against `global_norm` (fp64, 4096-chunks) within 1e-5
/// relative, output and scratch poisoned, aligned and unaligned, sizes around the chunk size.
fn grad_norm_matches_global_norm(gpu: &Gpu) -> Result<()> {
    let s = gpu.be.stream();
    for &n in &[1usize, 1000, 4097, 16384, 16385, (1 << 20) + 3, 3_000_001] {
        for off in [0usize, 1] {
            let mut rng = ChaCha8Rng::seed_from_u64(5000 + n as u64 * 2 + off as u64);
            let g = grads(&mut rng, n);
            let want = global_norm(&g);
            let dg = upload_guarded(&gpu.be, &g, off, GUARD_F32)?;
            let mut out = s
                .clone_htod(&[f32::NAN, GUARD_F32])
                .map_err(|e| anyhow!("{e}"))?;
            let mut partials = s
                .clone_htod(&vec![f64::NAN; grad_norm_partials_len(n)])
                .map_err(|e| anyhow!("{e}"))?;
            gpu.k.grad_norm(
                &dg.slice(off..off + n),
                &mut partials,
                &mut out.slice_mut(0..1),
            )?;
            let got = s.clone_dtoh(&out).map_err(|e| anyhow!("{e}"))?;
            ensure!(
                got[1] == GUARD_F32,
                "n={n}: grad_norm wrote past its output"
            );
            let e = ((got[0] as f64 - want as f64) / want as f64).abs();
            ensure!(
                e < 1e-5,
                "n={n} offset={off}: norm {} vs CPU {want} (relative error {e:e})",
                got[0]
            );
        }
    }
    Ok(())
}

/// `CudaAdamW::update` (device norm, device clip, bf16 copy) against the host `AdamW::update`
/// with `clip_scale(global_norm(g), 1.0)`, over four steps with clipping active.
fn cuda_adamw_update_matches_host_adamw(gpu: &Gpu) -> Result<()> {
    let n = (1 << 20) + 3;
    let no_decay = 12345;
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let st = state(&mut rng, n);
    let cfg = AdamWConfig::default();
    let mut host = AdamW::new(cfg, n, no_decay);
    host.m = st.m.clone();
    host.v = st.v.clone();
    host.step = 7;
    let mut hp = st.p.clone();
    let s = gpu.be.stream();
    let mut dev = CudaAdamW::from_host(&gpu.be, &host)?;
    let mut dp = s.clone_htod(&st.p).map_err(|e| anyhow!("{e}"))?;
    let mut db = s
        .clone_htod(&vec![bf16::from_bits(NAN_BF16); n])
        .map_err(|e| anyhow!("{e}"))?;
    for t in 0..4 {
        let g = grads(&mut rng, n);
        let dg = s.clone_htod(&g).map_err(|e| anyhow!("{e}"))?;
        let lr = 4e-4 / (t + 1) as f32;
        let norm = global_norm(&g);
        ensure!(norm > 1.0, "test setup: gradients should be clipped");
        host.update(&mut hp, &g, lr, clip_scale(norm, 1.0));
        dev.update(&mut dp, &dg, Some(&mut db), lr, 1.0)?;
        let dnorm = s.clone_dtoh(dev.norm()).map_err(|e| anyhow!("{e}"))?[0];
        ensure!(
            ((dnorm - norm) / norm).abs() < 1e-5,
            "step {t}: device norm {dnorm} vs {norm}"
        );
    }
    let got = dev.to_host()?;
    ensure!(
        got.step == host.step,
        "step count {} vs {}",
        got.step,
        host.step
    );
    let gp = s.clone_dtoh(&dp).map_err(|e| anyhow!("{e}"))?;
    let gb = s.clone_dtoh(&db).map_err(|e| anyhow!("{e}"))?;
    for (what, a, b) in [
        ("params", &gp, &hp),
        ("m", &got.m, &host.m),
        ("v", &got.v, &host.v),
    ] {
        let e = rel_err(a, b);
        ensure!(e < 1e-5, "{what}: relative error {e:e} >= 1e-5");
    }
    for i in 0..n {
        ensure!(
            gb[i].to_bits() == rne_bf16(gp[i]),
            "bf16 copy [{i}] is not the RNE of {}",
            gp[i]
        );
    }
    Ok(())
}

/// The same inputs twice through norm + update: every output identical bit for bit.
fn two_runs_bit_identical(gpu: &Gpu) -> Result<()> {
    let n = (1 << 22) + 5;
    let s = gpu.be.stream();
    let run = || -> Result<RunBits> {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let st = state(&mut rng, n);
        let mut host = AdamW::new(AdamWConfig::default(), n, 1000);
        host.m = st.m;
        host.v = st.v;
        let mut dev = CudaAdamW::from_host(&gpu.be, &host)?;
        let mut dp = s.clone_htod(&st.p).map_err(|e| anyhow!("{e}"))?;
        let mut db = s.alloc_zeros::<bf16>(n).map_err(|e| anyhow!("{e}"))?;
        for _ in 0..3 {
            let dg = s
                .clone_htod(&grads(&mut rng, n))
                .map_err(|e| anyhow!("{e}"))?;
            dev.update(&mut dp, &dg, Some(&mut db), 1e-3, 1.0)?;
        }
        let h = dev.to_host()?;
        let p = s.clone_dtoh(&dp).map_err(|e| anyhow!("{e}"))?;
        let b = s.clone_dtoh(&db).map_err(|e| anyhow!("{e}"))?;
        let norm = s.clone_dtoh(dev.norm()).map_err(|e| anyhow!("{e}"))?[0];
        Ok((
            bits(&p),
            bits(&h.m),
            bits(&h.v),
            b.iter().map(|x| x.to_bits()).collect(),
            norm.to_bits(),
        ))
    };
    let a = run()?;
    let b = run()?;
    ensure!(
        a.4 == b.4,
        "grad norms differ: {} vs {}",
        f32::from_bits(a.4),
        f32::from_bits(b.4)
    );
    ensure!(a.0 == b.0, "params differ between runs");
    ensure!(a.1 == b.1, "m differs between runs");
    ensure!(a.2 == b.2, "v differs between runs");
    ensure!(a.3 == b.3, "bf16 params differ between runs");
    Ok(())
}

/// Buffers of different lengths are an error, not a launch.
fn adamw_rejects_mismatched_lengths(gpu: &Gpu) -> Result<()> {
    let s = gpu.be.stream();
    let mut p = s.alloc_zeros::<f32>(10).map_err(|e| anyhow!("{e}"))?;
    let g = s.alloc_zeros::<f32>(9).map_err(|e| anyhow!("{e}"))?;
    let mut m = s.alloc_zeros::<f32>(10).map_err(|e| anyhow!("{e}"))?;
    let mut v = s.alloc_zeros::<f32>(10).map_err(|e| anyhow!("{e}"))?;
    let args = AdamWConfig::default().step_args(1e-3, 1.0, 1, 0);
    let r = gpu.k.step(
        &mut p.as_view_mut(),
        &g.as_view(),
        &mut m.as_view_mut(),
        &mut v.as_view_mut(),
        None,
        &args,
        Clip::Host,
    );
    let e = r
        .err()
        .ok_or_else(|| anyhow!("mismatched lengths were accepted"))?;
    ensure!(format!("{e}").contains("grads 9"), "unexpected error: {e}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// training-step kernels: embedding, layernorm, SwiGLU, RoPE, cross-entropy
//
// Each output is compared with the CPU op run on the same fp32 inputs twice: in f64 (the exact
// math), ‖out − ref‖/‖ref‖ < 1e-5; and in f32 (the executor the demo trains with), within 1e-5
// plus that f32 op's own distance from the f64 one.
// Offsets 0 and 1 into guarded buffers run the float4 path and the scalar path.

const KERNEL_TOL: f64 = 1e-5;

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// `got` is finite and within [`KERNEL_TOL`] of both references.
fn check_close(ctx: &str, what: &str, got: &[f32], want32: &[f32], want64: &[f64]) -> Result<()> {
    ensure!(
        got.len() == want32.len() && got.len() == want64.len(),
        "{ctx}: {what}: lengths {} / {} / {}",
        got.len(),
        want32.len(),
        want64.len()
    );
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        ensure!(false, "{ctx}: {what}[{i}] = {} is not finite", got[i]);
    }
    let e32 = rel_err(got, want32);
    let e64 = rel_err64(got, want64);
    // The f32 CPU op rounds too (sequential fp32 sums: ~1e-5 over a 50304-wide softmax row),
    // so against it the limit grows by its own distance from the f64 op (triangle inequality).
    let eref = rel_err64(want32, want64);
    ensure!(
        e64 < KERNEL_TOL && e32 < KERNEL_TOL + eref,
        "{ctx}: {what}: relative error {e64:e} vs the f64 CPU op (limit {KERNEL_TOL:e}), {e32:e} \
         vs the f32 CPU op (limit {KERNEL_TOL:e} + {eref:e}, the f32 op's own error)"
    );
    Ok(())
}

fn nan_vec(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// Token ids with many repeats: half from a hot set of at most 20 ids, half uniform over `v`.
fn repeated_ids(rng: &mut ChaCha8Rng, n: usize, v: usize) -> Vec<u32> {
    let hot = v.min(20) as u32;
    (0..n)
        .map(|_| {
            if rng.random_bool(0.5) {
                rng.random_range(0..hot)
            } else {
                rng.random_range(0..v as u32)
            }
        })
        .collect()
}

/// Runs without a GPU: the host bucketing of the embedding backward on a hand-worked case.
fn embedding_plan_groups_positions_by_id() -> Result<()> {
    let ids = [5u32, 2, 5, 0, 2, 5, 9];
    let p = EmbeddingBwdPlan::new(&ids, 10)?;
    ensure!(
        p.bucket_ids == vec![0, 2, 5, 9],
        "bucket ids {:?}",
        p.bucket_ids
    );
    ensure!(
        p.bucket_start == vec![0, 1, 3, 6, 7],
        "starts {:?}",
        p.bucket_start
    );
    ensure!(
        p.positions == vec![3, 1, 4, 0, 2, 5, 6],
        "positions {:?}",
        p.positions
    );
    let e = EmbeddingBwdPlan::new(&ids, 9)
        .err()
        .ok_or_else(|| anyhow!("id 9 accepted with a vocabulary of 9"))?;
    ensure!(
        format!("{e}").contains("position 6"),
        "unexpected error: {e}"
    );
    let empty = EmbeddingBwdPlan::new(&[], 4)?;
    ensure!(
        empty.bucket_start == vec![0] && empty.buckets() == 0,
        "empty plan {empty:?}"
    );
    Ok(())
}

const EMB_SHAPES: [(usize, usize, usize); 4] = [
    (1, 64, 37),
    (7, 300, 37),
    (513, 256, 4096),
    (4096, 2048, 50304),
];

/// Gather: bit-identical to the CPU op (a copy), output poisoned, guards intact.
fn embedding_fwd_matches_cpu(gpu: &Gpu) -> Result<()> {
    let k = EmbeddingKernels::new(&gpu.be)?;
    for &(n, d, v) in &EMB_SHAPES {
        for off in [0usize, 1] {
            let ctx = format!("embedding_fwd n={n} d={d} V={v} offset={off}");
            let mut rng = ChaCha8Rng::seed_from_u64(7000 + (n * d + v + off) as u64);
            let wte = uniform(&mut rng, v * d, -1.0, 1.0);
            let ids = repeated_ids(&mut rng, n, v);
            let dw = upload_guarded(&gpu.be, &wte, off, GUARD_F32)?;
            let di = upload_guarded(&gpu.be, &ids, off, u32::MAX)?;
            let mut dout = upload_guarded(&gpu.be, &nan_vec(n * d), off, GUARD_F32)?;
            k.forward(
                &mut dout.slice_mut(off..off + n * d),
                &di.slice(off..off + n),
                &dw.slice(off..off + v * d),
                n,
                d,
            )?;
            let got = download_guarded(&gpu.be, &dout, off, n * d, GUARD_F32, "out")?;
            let mut want = vec![0f32; n * d];
            cpu_emb::embedding_fwd(&mut want, &ids, &wte, d)?;
            check_bits(&ctx, "out", &got, &want)?;
        }
    }
    Ok(())
}

/// Scatter-add with repeated ids into a random (non-zero) dwte: bit-identical to the CPU op
/// (same additions, same order), and to a second run.
fn embedding_bwd_matches_cpu_bit_exact(gpu: &Gpu) -> Result<()> {
    let k = EmbeddingKernels::new(&gpu.be)?;
    for &(n, d, v) in &EMB_SHAPES {
        for off in [0usize, 1] {
            let ctx = format!("embedding_bwd n={n} d={d} V={v} offset={off}");
            let mut rng = ChaCha8Rng::seed_from_u64(8000 + (n * d + v + off) as u64);
            let dwte0 = uniform(&mut rng, v * d, -1.0, 1.0);
            let dout = uniform(&mut rng, n * d, -1.0, 1.0);
            let ids = repeated_ids(&mut rng, n, v);
            let plan = EmbeddingBwdPlan::new(&ids, v)?.upload(gpu.be.stream())?;
            let ddout = upload_guarded(&gpu.be, &dout, off, GUARD_F32)?;
            let mut runs = Vec::new();
            for _ in 0..2 {
                let mut ddw = upload_guarded(&gpu.be, &dwte0, off, GUARD_F32)?;
                k.backward(
                    &mut ddw.slice_mut(off..off + v * d),
                    &ddout.slice(off..off + n * d),
                    &plan,
                    d,
                )?;
                runs.push(download_guarded(
                    &gpu.be,
                    &ddw,
                    off,
                    v * d,
                    GUARD_F32,
                    "dwte",
                )?);
            }
            let mut want = dwte0.clone();
            cpu_emb::embedding_bwd(&mut want, &ids, &dout, d)?;
            check_bits(&ctx, "dwte vs CPU", &runs[0], &want)?;
            check_bits(&ctx, "dwte run 2 vs run 1", &runs[1], &runs[0])?;
        }
    }
    Ok(())
}

const LN_SHAPES: [(usize, usize); 5] = [(1, 64), (7, 300), (513, 256), (4096, 2048), (3, 37)];

/// Rows with their own offset and spread, so means and variances are far from zero.
fn ln_input(rng: &mut ChaCha8Rng, n: usize, d: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n * d);
    for _ in 0..n {
        // |offset| <= 1, spread >= 1: the f32 CPU reference's sequential sums stay well inside
        // the tolerance (a large offset over a small spread would test the reference's
        // rounding, not the kernel's).
        let (o, s) = (
            rng.random_range(-1.0f32..1.0),
            rng.random_range(1.0f32..4.0),
        );
        x.extend((0..d).map(|_| o + s * rng.random_range(-1.0f32..1.0)));
    }
    x
}

fn layernorm_fwd_matches_cpu(gpu: &Gpu) -> Result<()> {
    for ver in LnVersion::ALL {
        layernorm_fwd_version(gpu, ver)?;
    }
    Ok(())
}

fn layernorm_fwd_version(gpu: &Gpu, ver: LnVersion) -> Result<()> {
    let k = LayerNormKernels::with_version(&gpu.be, ver)?;
    let eps = 1e-5;
    for &(n, d) in &LN_SHAPES {
        for off in [0usize, 1] {
            let ctx = format!("layernorm_fwd {ver:?} n={n} d={d} offset={off}");
            let mut rng = ChaCha8Rng::seed_from_u64(9000 + (n * d + off) as u64);
            let x = ln_input(&mut rng, n, d);
            let dx = upload_guarded(&gpu.be, &x, off, GUARD_F32)?;
            let mut dout = upload_guarded(&gpu.be, &nan_vec(n * d), off, GUARD_F32)?;
            let mut dmean = upload_guarded(&gpu.be, &nan_vec(n), off, GUARD_F32)?;
            let mut drstd = upload_guarded(&gpu.be, &nan_vec(n), off, GUARD_F32)?;
            k.forward(
                &mut dout.slice_mut(off..off + n * d),
                &mut dmean.slice_mut(off..off + n),
                &mut drstd.slice_mut(off..off + n),
                &dx.slice(off..off + n * d),
                n,
                d,
                eps as f32,
            )?;
            let outs = [&dout, &dmean, &drstd];
            check_layernorm_fwd(gpu, &ctx, &x, d, eps, off, outs)?;
        }
    }
    Ok(())
}

/// The layernorm forward outputs (out `[n, d]`, mean `[n]`, rstd `[n]`, each guarded at view
/// offset `off`) of input `x` `[n, d]` against the CPU op in f32 and f64 ([`check_close`]).
fn check_layernorm_fwd(
    gpu: &Gpu,
    ctx: &str,
    x: &[f32],
    d: usize,
    eps: f64,
    off: usize,
    [dout, dmean, drstd]: [&CudaSlice<f32>; 3],
) -> Result<()> {
    let n = x.len() / d;
    let (mut o32, mut m32, mut r32) = (vec![0f32; n * d], vec![0f32; n], vec![0f32; n]);
    cpu_ln::layernorm_fwd(&mut o32, &mut m32, &mut r32, x, d, eps as f32);
    let (mut o64, mut m64, mut r64) = (vec![0f64; n * d], vec![0f64; n], vec![0f64; n]);
    cpu_ln::layernorm_fwd(&mut o64, &mut m64, &mut r64, &to64(x), d, eps);
    let got = download_guarded(&gpu.be, dout, off, n * d, GUARD_F32, "out")?;
    check_close(ctx, "out", &got, &o32, &o64)?;
    let got = download_guarded(&gpu.be, dmean, off, n, GUARD_F32, "mean")?;
    check_close(ctx, "mean", &got, &m32, &m64)?;
    let got = download_guarded(&gpu.be, drstd, off, n, GUARD_F32, "rstd")?;
    check_close(ctx, "rstd", &got, &r32, &r64)?;
    Ok(())
}

/// The fused residual add: the sum bit-identical to the CPU `add`, then the layernorm of that
/// sum against the CPU op.
fn layernorm_fwd_residual_matches_cpu(gpu: &Gpu) -> Result<()> {
    for ver in LnVersion::ALL {
        layernorm_fwd_residual_version(gpu, ver)?;
    }
    Ok(())
}

fn layernorm_fwd_residual_version(gpu: &Gpu, ver: LnVersion) -> Result<()> {
    let k = LayerNormKernels::with_version(&gpu.be, ver)?;
    let eps = 1e-5;
    for &(n, d) in &LN_SHAPES {
        for off in [0usize, 1] {
            let ctx = format!("layernorm_fwd_residual {ver:?} n={n} d={d} offset={off}");
            let mut rng = ChaCha8Rng::seed_from_u64(9500 + (n * d + off) as u64);
            let a = ln_input(&mut rng, n, d);
            let b = uniform(&mut rng, n * d, -1.0, 1.0);
            let da = upload_guarded(&gpu.be, &a, off, GUARD_F32)?;
            let db = upload_guarded(&gpu.be, &b, off, GUARD_F32)?;
            let mut dsum = upload_guarded(&gpu.be, &nan_vec(n * d), off, GUARD_F32)?;
            let mut dout = upload_guarded(&gpu.be, &nan_vec(n * d), off, GUARD_F32)?;
            let mut dmean = upload_guarded(&gpu.be, &nan_vec(n), off, GUARD_F32)?;
            let mut drstd = upload_guarded(&gpu.be, &nan_vec(n), off, GUARD_F32)?;
            k.forward_residual(
                &mut dout.slice_mut(off..off + n * d),
                &mut dmean.slice_mut(off..off + n),
                &mut drstd.slice_mut(off..off + n),
                &mut dsum.slice_mut(off..off + n * d),
                &da.slice(off..off + n * d),
                &db.slice(off..off + n * d),
                n,
                d,
                eps as f32,
            )?;
            let mut x = vec![0f32; n * d];
            cpu_pw::add(&mut x, &a, &b);
            let got = download_guarded(&gpu.be, &dsum, off, n * d, GUARD_F32, "xsum")?;
            check_bits(&ctx, "xsum", &got, &x)?;
            let outs = [&dout, &dmean, &drstd];
            check_layernorm_fwd(gpu, &ctx, &x, d, eps, off, outs)?;
        }
    }
    Ok(())
}

fn layernorm_bwd_matches_cpu(gpu: &Gpu) -> Result<()> {
    for ver in LnVersion::ALL {
        layernorm_bwd_version(gpu, ver)?;
    }
    Ok(())
}

fn layernorm_bwd_version(gpu: &Gpu, ver: LnVersion) -> Result<()> {
    let k = LayerNormKernels::with_version(&gpu.be, ver)?;
    for &(n, d) in &LN_SHAPES {
        for off in [0usize, 1] {
            for accumulate in [false, true] {
                let ctx = format!(
                    "layernorm_bwd {ver:?} n={n} d={d} offset={off} accumulate={accumulate}"
                );
                let mut rng = ChaCha8Rng::seed_from_u64(10_000 + (n * d + off) as u64);
                let x = ln_input(&mut rng, n, d);
                let (mut xhat, mut mean, mut rstd) =
                    (vec![0f32; n * d], vec![0f32; n], vec![0f32; n]);
                cpu_ln::layernorm_fwd(&mut xhat, &mut mean, &mut rstd, &x, d, 1e-5);
                let dy = uniform(&mut rng, n * d, -1.0, 1.0);
                let dx0 = if accumulate {
                    uniform(&mut rng, n * d, -1.0, 1.0)
                } else {
                    nan_vec(n * d)
                };
                let ddy = upload_guarded(&gpu.be, &dy, off, GUARD_F32)?;
                let dxh = upload_guarded(&gpu.be, &xhat, off, GUARD_F32)?;
                let drs = upload_guarded(&gpu.be, &rstd, off, GUARD_F32)?;
                let mut ddx = upload_guarded(&gpu.be, &dx0, off, GUARD_F32)?;
                k.backward(
                    &mut ddx.slice_mut(off..off + n * d),
                    &ddy.slice(off..off + n * d),
                    &dxh.slice(off..off + n * d),
                    &drs.slice(off..off + n),
                    n,
                    d,
                    accumulate,
                )?;
                let got = download_guarded(&gpu.be, &ddx, off, n * d, GUARD_F32, "dx")?;
                let mut w32 = dx0.clone();
                cpu_ln::layernorm_bwd(&mut w32, &dy, &xhat, &rstd, d, accumulate);
                let mut w64 = to64(&dx0);
                cpu_ln::layernorm_bwd(
                    &mut w64,
                    &to64(&dy),
                    &to64(&xhat),
                    &to64(&rstd),
                    d,
                    accumulate,
                );
                check_close(&ctx, "dx", &got, &w32, &w64)?;
            }
        }
    }
    Ok(())
}

const SWIGLU_SHAPES: [(usize, usize); 5] = [(1, 64), (7, 300), (513, 256), (64, 8192), (5, 37)];

fn swiglu_matches_cpu(gpu: &Gpu) -> Result<()> {
    let k = PointwiseKernels::new(&gpu.be)?;
    for &(n, f) in &SWIGLU_SHAPES {
        for off in [0usize, 1] {
            let ctx = format!("swiglu n={n} f={f} offset={off}");
            let mut rng = ChaCha8Rng::seed_from_u64(11_000 + (n * f + off) as u64);
            // Gates over (-12, 12): both tails of the sigmoid.
            let mut gu = uniform(&mut rng, n * 2 * f, -2.0, 2.0);
            for row in gu.chunks_exact_mut(2 * f) {
                for g in &mut row[..f] {
                    *g *= 6.0;
                }
            }
            let dh = uniform(&mut rng, n * f, -1.0, 1.0);
            let dgu_in = upload_guarded(&gpu.be, &gu, off, GUARD_F32)?;
            let ddh = upload_guarded(&gpu.be, &dh, off, GUARD_F32)?;
            let mut dout = upload_guarded(&gpu.be, &nan_vec(n * f), off, GUARD_F32)?;
            let mut dgrad = upload_guarded(&gpu.be, &nan_vec(n * 2 * f), off, GUARD_F32)?;
            k.swiglu_fwd(
                &mut dout.slice_mut(off..off + n * f),
                &dgu_in.slice(off..off + n * 2 * f),
                n,
                f,
            )?;
            k.swiglu_bwd(
                &mut dgrad.slice_mut(off..off + n * 2 * f),
                &ddh.slice(off..off + n * f),
                &dgu_in.slice(off..off + n * 2 * f),
                n,
                f,
            )?;
            let (mut h32, mut h64) = (vec![0f32; n * f], vec![0f64; n * f]);
            cpu_pw::swiglu_fwd(&mut h32, &gu, f);
            cpu_pw::swiglu_fwd(&mut h64, &to64(&gu), f);
            let got = download_guarded(&gpu.be, &dout, off, n * f, GUARD_F32, "h")?;
            check_close(&ctx, "h", &got, &h32, &h64)?;
            let (mut g32, mut g64) = (vec![0f32; n * 2 * f], vec![0f64; n * 2 * f]);
            cpu_pw::swiglu_bwd(&mut g32, &dh, &gu, f);
            cpu_pw::swiglu_bwd(&mut g64, &to64(&dh), &to64(&gu), f);
            let got = download_guarded(&gpu.be, &dgrad, off, n * 2 * f, GUARD_F32, "dgu")?;
            check_close(&ctx, "dgu", &got, &g32, &g64)?;
        }
    }
    Ok(())
}

const ROPE_SHAPES: [AttnShape; 4] = [
    AttnShape {
        b: 1,
        t: 1,
        h: 1,
        dh: 64,
    },
    AttnShape {
        b: 1,
        t: 7,
        h: 3,
        dh: 100,
    },
    AttnShape {
        b: 3,
        t: 171,
        h: 4,
        dh: 64,
    },
    AttnShape {
        b: 2,
        t: 2048,
        h: 16,
        dh: 128,
    },
];

/// Forward and backward against the CPU op (table from `rope_table` in f64, rounded to f32,
/// as the model uploads it); the v third comes back bit-identical; forward then backward
/// gives back the input.
fn rope_matches_cpu(gpu: &Gpu) -> Result<()> {
    let k = PointwiseKernels::new(&gpu.be)?;
    for &s in &ROPE_SHAPES {
        let (n, d) = (s.n(), s.d());
        let len = n * 3 * d;
        let t64 = rope_table(s.t, s.dh, 10_000.0);
        let t32: Vec<f32> = t64.iter().map(|&x| x as f32).collect();
        for off in [0usize, 1] {
            let dtab = upload_guarded(&gpu.be, &t32, off, GUARD_F32)?;
            for transpose in [false, true] {
                let ctx = format!("rope {s:?} offset={off} backward={transpose}");
                let mut rng =
                    ChaCha8Rng::seed_from_u64(12_000 + (len + off + 2 * transpose as usize) as u64);
                let x = uniform(&mut rng, len, -2.0, 2.0);
                let mut dq = upload_guarded(&gpu.be, &x, off, GUARD_F32)?;
                if transpose {
                    k.rope_bwd(
                        &mut dq.slice_mut(off..off + len),
                        &dtab.slice(off..off + s.t * s.dh),
                        s,
                    )?;
                } else {
                    k.rope_fwd(
                        &mut dq.slice_mut(off..off + len),
                        &dtab.slice(off..off + s.t * s.dh),
                        s,
                    )?;
                }
                let got = download_guarded(&gpu.be, &dq, off, len, GUARD_F32, "qkv")?;
                let mut w32 = x.clone();
                cpu_pw::rope(&mut w32, &t32, s, transpose);
                let mut w64 = to64(&x);
                cpu_pw::rope(&mut w64, &to64(&t32), s, transpose);
                check_close(&ctx, "qkv", &got, &w32, &w64)?;
                for r in 0..n {
                    let v = r * 3 * d + 2 * d..(r + 1) * 3 * d;
                    check_bits(&ctx, &format!("v third of row {r}"), &got[v.clone()], &x[v])?;
                }
                if !transpose {
                    // Rotate back: the inverse rotation must return the input.
                    k.rope_bwd(
                        &mut dq.slice_mut(off..off + len),
                        &dtab.slice(off..off + s.t * s.dh),
                        s,
                    )?;
                    let back = download_guarded(&gpu.be, &dq, off, len, GUARD_F32, "qkv")?;
                    let e = rel_err(&back, &x);
                    ensure!(
                        e < 1e-6,
                        "{ctx}: forward then backward is off the input by {e:e}"
                    );
                }
            }
        }
    }
    Ok(())
}

const CE_SHAPES: [(usize, usize); 6] = [
    (1, 37),
    (7, 50304),
    (513, 4096),
    (4096, 37),
    (513, 50304),
    (3, 4097),
];

/// Logits with per-row offsets up to ±60 (a naive exp would overflow) and, when n >= 3, one row
/// whose target is also its maximum by a wide margin.
fn ce_input(rng: &mut ChaCha8Rng, n: usize, v: usize) -> (Vec<f32>, Vec<u32>) {
    let mut x = Vec::with_capacity(n * v);
    for _ in 0..n {
        let o = rng.random_range(-60.0f32..60.0);
        x.extend((0..v).map(|_| o + rng.random_range(-8.0f32..8.0)));
    }
    let t: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    if n >= 3 {
        // Its loss is ~1e-9: fp32 resolves it as 0 or one ulp of 1, so it is only checked as
        // part of a vector of normal-sized losses.
        let r = n / 2;
        x[r * v + t[r] as usize] += 30.0;
    }
    (x, t)
}

/// The logits are stored in bf16: the CPU references get the same bf16 values (widened), the
/// losses (fp32 math) must be within [`KERNEL_TOL`], and the gradient, rounded to bf16 as the
/// kernel writes it, within one bf16 rounding of the f64 reference ([`check_bf16_close`]).
fn cross_entropy_matches_cpu(gpu: &Gpu) -> Result<()> {
    let k = CrossEntropyKernels::new(&gpu.be)?;
    let guard = bf16::from_f32(GUARD_F32);
    for &(n, v) in &CE_SHAPES {
        for off in [0usize, 1] {
            for with_grad in [true, false] {
                let ctx = format!("cross_entropy n={n} V={v} offset={off} grad={with_grad}");
                let mut rng = ChaCha8Rng::seed_from_u64(13_000 + (n * v + off) as u64);
                let (x, t) = ce_input(&mut rng, n, v);
                let xb: Vec<bf16> = x.iter().map(|&a| bf16::from_f32(a)).collect();
                let x: Vec<f32> = xb.iter().map(|&a| a.to_f32()).collect();
                let scale = with_grad.then_some(1.0 / n as f64);
                let mut dlog = upload_guarded(&gpu.be, &xb, off, guard)?;
                let dt = upload_guarded(&gpu.be, &t, off, u32::MAX)?;
                let mut dloss = upload_guarded(&gpu.be, &nan_vec(n), off, GUARD_F32)?;
                k.forward_backward(
                    &mut dlog.slice_mut(off..off + n * v),
                    &mut dloss.slice_mut(off..off + n),
                    &dt.slice(off..off + n),
                    n,
                    v,
                    scale.map(|s| s as f32),
                )?;
                let (mut x32, mut l32) = (x.clone(), vec![0f32; n]);
                cpu_ce::cross_entropy(&mut x32, &mut l32, &t, v, scale.map(|s| s as f32))?;
                let (mut x64, mut l64) = (to64(&x), vec![0f64; n]);
                cpu_ce::cross_entropy(&mut x64, &mut l64, &t, v, scale)?;
                let got = download_guarded(&gpu.be, &dloss, off, n, GUARD_F32, "losses")?;
                check_close(&ctx, "losses", &got, &l32, &l64)?;
                let got = download_guarded(&gpu.be, &dlog, off, n * v, guard, "logits")?;
                if with_grad {
                    check_bf16_close(&ctx, "dlogits", &got, &x64)?;
                    check_ce_grad_elements(&ctx, &got, &x64, &t, v, scale.unwrap_or(0.0))?;
                } else {
                    let same = got.iter().zip(&xb).all(|(a, b)| a.to_bits() == b.to_bits());
                    ensure!(same, "{ctx}: logits (no grad) were modified");
                }
            }
        }
    }
    Ok(())
}

/// The two layernorm versions give the same bits: rows that fit the registers (d = 2048, 512,
/// 36), rows too wide for them (d = 2052, 4096) and the scalar path (d = 37), forward, fused
/// residual forward and backward (accumulating).
fn layernorm_versions_bit_identical(gpu: &Gpu) -> Result<()> {
    let s = gpu.be.stream();
    let e = |e| anyhow!("{e}");
    let [a, b] = LnVersion::ALL.map(|v| LayerNormKernels::with_version(&gpu.be, v));
    let ks = [a?, b?];
    for &(n, d) in &[
        (300usize, 2048usize),
        (77, 512),
        (9, 36),
        (33, 2052),
        (17, 4096),
        (5, 37),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(14_500 + (n * d) as u64);
        let x = ln_input(&mut rng, n, d);
        let y = uniform(&mut rng, n * d, -1.0, 1.0);
        let dx0 = uniform(&mut rng, n * d, -1.0, 1.0);
        let mut outs: Vec<Vec<Vec<u32>>> = Vec::new();
        for k in &ks {
            let (dx_in, dy) = (s.clone_htod(&x).map_err(e)?, s.clone_htod(&y).map_err(e)?);
            let mut out = s.alloc_zeros::<f32>(n * d).map_err(e)?;
            let mut sum = s.alloc_zeros::<f32>(n * d).map_err(e)?;
            let mut mean = s.alloc_zeros::<f32>(n).map_err(e)?;
            let mut rstd = s.alloc_zeros::<f32>(n).map_err(e)?;
            let mut dx = s.clone_htod(&dx0).map_err(e)?;
            k.forward(
                &mut out.as_view_mut(),
                &mut mean.as_view_mut(),
                &mut rstd.as_view_mut(),
                &dx_in.as_view(),
                n,
                d,
                1e-5,
            )?;
            let fwd = [&out, &mean, &rstd].map(|b| s.clone_dtoh(b));
            k.backward(
                &mut dx.as_view_mut(),
                &dy.as_view(),
                &out.as_view(),
                &rstd.as_view(),
                n,
                d,
                true,
            )?;
            k.forward_residual(
                &mut out.as_view_mut(),
                &mut mean.as_view_mut(),
                &mut rstd.as_view_mut(),
                &mut sum.as_view_mut(),
                &dx_in.as_view(),
                &dy.as_view(),
                n,
                d,
                1e-5,
            )?;
            let mut all = Vec::new();
            for v in fwd {
                all.push(bits(&v.map_err(e)?));
            }
            for b in [&dx, &out, &mean, &rstd, &sum] {
                all.push(bits(&s.clone_dtoh(b).map_err(e)?));
            }
            outs.push(all);
        }
        let names = [
            "out", "mean", "rstd", "bwd dx", "res out", "res mean", "res rstd", "res sum",
        ];
        for (i, what) in names.iter().enumerate() {
            ensure!(
                outs[0][i] == outs[1][i],
                "layernorm n={n} d={d}: {what} differs between the Reread and Cached versions"
            );
        }
    }
    Ok(())
}

/// Element by element, the bf16 gradient of the cross-entropy against the f64 reference `want`:
/// off the targets (`scale·p_j`, no cancellation) the bf16 rounding of the reference or one of
/// its two neighbours; at each row's target (`scale·(p_t − 1)`, which cancels when `p_t` is near
/// 1) within one bf16 rounding plus the fp32 subtraction's error, `2^-8·|want| + 2^-21·scale`.
fn check_ce_grad_elements(
    ctx: &str,
    got: &[bf16],
    want: &[f64],
    targets: &[u32],
    v: usize,
    scale: f64,
) -> Result<()> {
    let mut bad = Vec::new();
    for (i, (g, &w)) in got.iter().zip(want).enumerate() {
        let (row, j) = (i / v, i % v);
        let ok = if j == targets[row] as usize {
            (g.to_f64() - w).abs() <= w.abs() / 256.0 + scale / (1u64 << 21) as f64
        } else {
            (g.to_bits() as i32 - rne_bf16(w as f32) as i32).abs() <= 1
        };
        if !ok {
            bad.push((i, g.to_f64(), w));
        }
    }
    ensure!(
        bad.is_empty(),
        "{ctx}: dlogits: {} of {} elements off (first [{}]: {} vs {})",
        bad.len(),
        got.len(),
        bad[0].0,
        bad[0].1,
        bad[0].2
    );
    Ok(())
}

/// The reductions (layernorm forward/backward, cross-entropy) give the same bits on two runs.
fn reductions_bit_identical_across_runs(gpu: &Gpu) -> Result<()> {
    let ln = LayerNormKernels::new(&gpu.be)?;
    let ce = CrossEntropyKernels::new(&gpu.be)?;
    let s = gpu.be.stream();
    let (n, d, v) = (4096usize, 2048usize, 50304usize);
    let mut rng = ChaCha8Rng::seed_from_u64(14_000);
    let x = ln_input(&mut rng, n, d);
    let dy = uniform(&mut rng, n * d, -1.0, 1.0);
    let (logits, t) = ce_input(&mut rng, 256, v);
    let logits: Vec<bf16> = logits.iter().map(|&a| bf16::from_f32(a)).collect();
    let run = || -> Result<Vec<Vec<u32>>> {
        let e = |e| anyhow!("{e}");
        let dx_in = s.clone_htod(&x).map_err(e)?;
        let ddy = s.clone_htod(&dy).map_err(e)?;
        let mut out = s.alloc_zeros::<f32>(n * d).map_err(e)?;
        let mut mean = s.alloc_zeros::<f32>(n).map_err(e)?;
        let mut rstd = s.alloc_zeros::<f32>(n).map_err(e)?;
        let mut dx = s.alloc_zeros::<f32>(n * d).map_err(e)?;
        ln.forward(
            &mut out.as_view_mut(),
            &mut mean.as_view_mut(),
            &mut rstd.as_view_mut(),
            &dx_in.as_view(),
            n,
            d,
            1e-5,
        )?;
        ln.backward(
            &mut dx.as_view_mut(),
            &ddy.as_view(),
            &out.as_view(),
            &rstd.as_view(),
            n,
            d,
            false,
        )?;
        let mut dl = s.clone_htod(&logits).map_err(e)?;
        let dt = s.clone_htod(&t).map_err(e)?;
        let mut loss = s.alloc_zeros::<f32>(256).map_err(e)?;
        ce.forward_backward(
            &mut dl.as_view_mut(),
            &mut loss.as_view_mut(),
            &dt.as_view(),
            256,
            v,
            Some(1.0 / 256.0),
        )?;
        let mut outs = Vec::new();
        for b in [&out, &mean, &rstd, &dx, &loss] {
            outs.push(bits(&s.clone_dtoh(b).map_err(e)?));
        }
        let dl = s.clone_dtoh(&dl).map_err(e)?;
        outs.push(dl.iter().map(|v| v.to_bits() as u32).collect());
        Ok(outs)
    };
    let a = run()?;
    let b = run()?;
    for (i, what) in ["ln out", "ln mean", "ln rstd", "ln dx", "losses", "dlogits"]
        .iter()
        .enumerate()
    {
        ensure!(a[i] == b[i], "{what} differs between two runs");
    }
    Ok(())
}

/// Every launcher refuses buffers shorter than its shape needs, and out-of-range ids in a plan.
fn kernel_launchers_reject_short_buffers(gpu: &Gpu) -> Result<()> {
    let s = gpu.be.stream();
    let e = |e| anyhow!("{e}");
    let short = s.alloc_zeros::<f32>(10).map_err(e)?;
    let mut short_mut = s.alloc_zeros::<f32>(10).map_err(e)?;
    let mut long_mut = s.alloc_zeros::<f32>(100).map_err(e)?;
    let long = s.alloc_zeros::<f32>(100).map_err(e)?;
    let ids = s.alloc_zeros::<u32>(4).map_err(e)?;
    let expect_err = |what: &str, r: Result<()>| -> Result<()> {
        let err = r
            .err()
            .ok_or_else(|| anyhow!("{what}: short buffer accepted"))?;
        ensure!(
            format!("{err}").contains("holds 10 elements"),
            "{what}: unexpected error: {err}"
        );
        Ok(())
    };
    let emb = EmbeddingKernels::new(&gpu.be)?;
    expect_err(
        "embedding_fwd",
        emb.forward(
            &mut short_mut.as_view_mut(),
            &ids.as_view(),
            &long.as_view(),
            4,
            5,
        ),
    )?;
    let ln = LayerNormKernels::new(&gpu.be)?;
    let mut m = s.alloc_zeros::<f32>(4).map_err(e)?;
    let mut r = s.alloc_zeros::<f32>(4).map_err(e)?;
    expect_err(
        "layernorm_fwd",
        ln.forward(
            &mut long_mut.as_view_mut(),
            &mut m.as_view_mut(),
            &mut r.as_view_mut(),
            &short.as_view(),
            4,
            5,
            1e-5,
        ),
    )?;
    let pw = PointwiseKernels::new(&gpu.be)?;
    expect_err(
        "swiglu_fwd",
        pw.swiglu_fwd(&mut long_mut.as_view_mut(), &short.as_view(), 2, 4),
    )?;
    let shape = AttnShape {
        b: 1,
        t: 2,
        h: 1,
        dh: 4,
    };
    expect_err(
        "rope_fwd",
        pw.rope_fwd(&mut short_mut.as_view_mut(), &long.as_view(), shape),
    )?;
    let ce = CrossEntropyKernels::new(&gpu.be)?;
    let mut short_logits = s.alloc_zeros::<bf16>(10).map_err(e)?;
    expect_err(
        "cross_entropy",
        ce.forward_backward(
            &mut short_logits.as_view_mut(),
            &mut m.as_view_mut(),
            &ids.as_view(),
            4,
            5,
            Some(0.25),
        ),
    )?;
    Ok(())
}
