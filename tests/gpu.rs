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

use std::sync::Arc;

use anyhow::{anyhow, ensure, Result};
use baddata::backend::cuda::adamw::{grad_norm_partials_len, AdamWKernels, Clip, CudaAdamW};
use baddata::backend::cuda::CudaBackend;
use baddata::optim::adamw::{
    adamw_reference, clip_scale, global_norm, AdamW, AdamWConfig, StepArgs,
};
use cudarc::driver::CudaSlice;
use half::bf16;
use libtest_mimic::{Arguments, Trial};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Gpu {
    be: CudaBackend,
    k: AdamWKernels,
}

type TestFn = fn(&Gpu) -> Result<()>;

fn main() {
    let mut args = Arguments::from_args();
    // One GPU, one stream: run the tests one after another.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let gpu: Result<Arc<Gpu>, String> = CudaBackend::open(0)
        .and_then(|be| {
            let k = AdamWKernels::new(&be)?;
            Ok(Gpu { be, k })
        })
        .map(Arc::new)
        .map_err(|e| format!("{e:#}"));
    let required = std::env::var("BADDATA_GPU_REQUIRED").is_ok_and(|v| v == "1");
    match &gpu {
        Ok(g) => eprintln!("gpu tests on {}", g.be.describe()),
        Err(reason) if required => {
            eprintln!("BADDATA_GPU_REQUIRED=1 but no usable GPU: {reason}");
            std::process::exit(1);
        }
        Err(reason) => eprintln!("gpu tests ignored: {reason}"),
    }

    let tests: [(&str, TestFn); 6] = [
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
    ];
    let mut trials: Vec<Trial> = vec![Trial::test("bf16_oracle_rounds_to_nearest_even", || {
        bf16_oracle_rounds_to_nearest_even().map_err(|e| format!("{e:#}").into())
    })];
    trials.extend(tests.into_iter().map(|(name, f)| {
        let g = gpu.clone();
        Trial::test(name, move || {
            let g = g.map_err(|r| format!("no usable GPU: {r}"))?;
            f(&g).map_err(|e| format!("{e:#}").into())
        })
        .with_ignored_flag(gpu.is_err())
    }));
    libtest_mimic::run(&args, trials).exit();
}

// ---------------------------------------------------------------------------------------------
// helpers

const SIZES: [usize; 4] = [1, 1000, 4097, (1 << 20) + 3];
const GUARD_F32: f32 = 12345.678;
const GUARD_BF16: u16 = 0x1234;
const NAN_BF16: u16 = 0x7fc0;

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

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

/// ‖a − b‖ / ‖b‖ in f64.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut r) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y as f64).powi(2);
        r += (y as f64).powi(2);
    }
    (d / r.max(f64::MIN_POSITIVE)).sqrt()
}

/// fp32 -> bf16 bits, round to nearest, ties to even (finite inputs), written independently of
/// the kernel and of the `half` crate.
fn rne_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The host oracle used for the kernel's bf16 copy, checked on its own (runs without a GPU):
/// hand-worked ties and carries, then agreement with the `half` crate on random values.
fn bf16_oracle_rounds_to_nearest_even() -> Result<()> {
    // (fp32 bits, expected bf16 bits)
    let cases = [
        (0x3f80_0000u32, 0x3f80u16), // 1.0 exact
        (0x3f80_8000, 0x3f80),       // tie, even below: down
        (0x3f81_8000, 0x3f82),       // tie, odd below: up
        (0x3f80_8001, 0x3f81),       // just above the tie: up
        (0x3f80_7fff, 0x3f80),       // just below the tie: down
        (0x3fff_ffff, 0x4000),       // carry into the exponent
        (0xbf80_c000, 0xbf81),       // negative, above the tie
    ];
    for (x, want) in cases {
        let got = rne_bf16(f32::from_bits(x));
        ensure!(
            got == want,
            "rne_bf16({x:#010x}) = {got:#06x}, expected {want:#06x}"
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..100_000 {
        let x = f32::from_bits(rng.random::<u32>() & 0xbfff_ffff); // finite: exponent < 255
        let want = bf16::from_f32(x).to_bits();
        ensure!(
            rne_bf16(x) == want,
            "rne_bf16({x:e}) disagrees with half: {want:#06x}"
        );
    }
    Ok(())
}

/// Device buffer holding `off` guard elements, then `data`, then 3 guard elements.
fn upload_guarded<T: cudarc::driver::DeviceRepr + Copy>(
    gpu: &Gpu,
    data: &[T],
    off: usize,
    guard: T,
) -> Result<CudaSlice<T>> {
    let mut host = vec![guard; off];
    host.extend_from_slice(data);
    host.extend_from_slice(&[guard; 3]);
    gpu.be
        .stream()
        .clone_htod(&host)
        .map_err(|e| anyhow!("upload: {e}"))
}

/// Downloads `buf`, checks its guards are intact and returns the `n` elements after `off`.
fn download_guarded<T: cudarc::driver::DeviceRepr + Copy + PartialEq + std::fmt::Debug>(
    gpu: &Gpu,
    buf: &CudaSlice<T>,
    off: usize,
    n: usize,
    guard: T,
    what: &str,
) -> Result<Vec<T>> {
    let host = gpu
        .be
        .stream()
        .clone_dtoh(buf)
        .map_err(|e| anyhow!("download: {e}"))?;
    for (i, &x) in host[..off].iter().chain(&host[off + n..]).enumerate() {
        ensure!(x == guard, "{what}: guard element {i} overwritten: {x:?}");
    }
    Ok(host[off..off + n].to_vec())
}

/// Bits of (params, m, v, bf16 params, grad norm) after a run.
type RunBits = (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u16>, u32);

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

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
            let mut dp = upload_guarded(gpu, &st.p, off, GUARD_F32)?;
            let mut dm = upload_guarded(gpu, &st.m, off, GUARD_F32)?;
            let mut dv = upload_guarded(gpu, &st.v, off, GUARD_F32)?;
            let mut dnorm = s.clone_htod(&[f32::NAN]).map_err(|e| anyhow!("{e}"))?;
            let mut partials = s
                .clone_htod(&vec![f64::NAN; grad_norm_partials_len(n).max(1)])
                .map_err(|e| anyhow!("{e}"))?;
            let lrs = [1e-3f32, 5e-4, 2e-4];
            for (t, &lr) in lrs.iter().enumerate() {
                let g = grads(&mut rng, n);
                let gnorm = global_norm(&g);
                let max_norm = [0.5 * gnorm, 2.0 * gnorm, 0.0][t];
                let dg = upload_guarded(gpu, &g, off, GUARD_F32)?;
                let mut db = upload_guarded(
                    gpu,
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
                let args = StepArgs::new(&cfg, lr, f32::NAN, t as u64 + 1, no_decay);
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
                let gp = download_guarded(gpu, &dp, off, n, GUARD_F32, "params")?;
                let gm = download_guarded(gpu, &dm, off, n, GUARD_F32, "m")?;
                let gv = download_guarded(gpu, &dv, off, n, GUARD_F32, "v")?;
                let gb =
                    download_guarded(gpu, &db, off, n, bf16::from_bits(GUARD_BF16), "bf16 params")?;
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
        let mut dp = upload_guarded(gpu, &st.p, 0, GUARD_F32)?;
        let mut dm = upload_guarded(gpu, &st.m, 0, GUARD_F32)?;
        let mut dv = upload_guarded(gpu, &st.v, 0, GUARD_F32)?;
        for t in 1..=3u64 {
            let g = grads(&mut rng, n);
            let dg = upload_guarded(gpu, &g, 0, GUARD_F32)?;
            let args = StepArgs::new(&cfg, 3e-4 * t as f32, 0.7, t, no_decay);
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
                let got = download_guarded(gpu, buf, 0, n, GUARD_F32, what)?;
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
            let dg = upload_guarded(gpu, &g, off, GUARD_F32)?;
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
    let args = StepArgs::new(&AdamWConfig::default(), 1e-3, 1.0, 1, 0);
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
