//! What every GPU test harness (`tests/gpu*.rs`) shares: the entry point that opens the GPU or
//! reports every GPU test as ignored, and the helpers for random inputs, relative errors, bf16
//! rounding and guarded device buffers.
//!
//! Included by each harness with `#[path = "common/gpu.rs"] mod gpu_common;` (a file below
//! `tests/common/` is not a test target of its own); not every harness uses every helper.
#![allow(dead_code)]

use std::sync::Arc;

use anyhow::{anyhow, ensure, Result};
use baddata::backend::cuda::executor::CudaExecutor;
use baddata::backend::cuda::CudaDevice;
use baddata::backend::Backend;
use cudarc::driver::{CudaContext, CudaSlice, DeviceRepr};
use half::bf16;
use libtest_mimic::{Arguments, Trial};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A GPU test: gets the state the harness's setup built once.
pub type GpuTest<G> = fn(&G) -> Result<()>;

/// The shared CUDA context of the executor-level harnesses.
pub type Ctx = Arc<CudaContext>;

/// A host-only test (runs with or without a GPU), registered under `name`.
pub fn host_test(name: &'static str, f: fn() -> Result<()>) -> Trial {
    Trial::test(name, move || f().map_err(|e| format!("{e:#}").into()))
}

/// Runs a harness and exits with its status.
///
/// `setup` opens the GPU and builds the state every test in `gpu_tests` receives, with a line
/// describing the device. Every test is always registered: without a usable GPU (setup fails)
/// the GPU tests are reported as *ignored* (and fail with the reason if run anyway), never as
/// passed; with `BADDATA_GPU_REQUIRED=1` a missing GPU exits with status 1 instead.
/// `host_tests` run either way. One GPU, one stream: unless the command line says otherwise the
/// tests run one after another. `what` names the harness in the status line ("gpu matmul tests
/// on ...", "gpu matmul tests ignored: ...").
pub fn run_gpu_tests<G: Send + Sync + 'static>(
    what: &str,
    setup: impl FnOnce() -> Result<(G, String)>,
    host_tests: Vec<Trial>,
    gpu_tests: &[(&'static str, GpuTest<G>)],
) -> ! {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let gpu: Result<Arc<G>, String> = setup()
        .map(|(g, device)| {
            eprintln!("{what} tests on {device}");
            Arc::new(g)
        })
        .map_err(|e| format!("{e:#}"));
    let required = std::env::var("BADDATA_GPU_REQUIRED").is_ok_and(|v| v == "1");
    match &gpu {
        Ok(_) => {}
        Err(reason) if required => {
            eprintln!("BADDATA_GPU_REQUIRED=1 but no usable GPU: {reason}");
            std::process::exit(1);
        }
        Err(reason) => eprintln!("{what} tests ignored: {reason}"),
    }
    let mut trials = host_tests;
    trials.extend(gpu_tests.iter().map(|&(name, f)| {
        let g = gpu.clone();
        Trial::test(name, move || {
            let g = g.map_err(|r| format!("no usable GPU: {r}"))?;
            f(&g).map_err(|e| format!("{e:#}").into())
        })
        .with_ignored_flag(gpu.is_err())
    }));
    libtest_mimic::run(&args, trials).exit()
}

/// Setup of the executor-level harnesses: the context of device 0, checked by building one
/// executor on it (kernels compiled and loadable), and its description.
pub fn open_ctx() -> Result<(Ctx, String)> {
    let ctx = baddata::backend::cuda::open_context(0)?;
    exec(&ctx)?;
    let device = baddata::backend::cuda::describe_context(&ctx);
    Ok((ctx, device))
}

/// A fresh executor on the shared context (modules load in milliseconds).
pub fn exec(ctx: &Ctx) -> Result<CudaExecutor> {
    CudaExecutor::new(CudaDevice::new(ctx.clone())?)
}

/// A new executor buffer holding `host`.
pub fn upload_f32(be: &CudaExecutor, host: &[f32]) -> Result<CudaSlice<f32>> {
    let mut buf = be.alloc(host.len())?;
    be.upload(host, &mut buf)?;
    Ok(buf)
}

/// Guard value around device buffers (finite, not a plausible result).
pub const GUARD: f32 = 12345.678;

/// `n` values uniform in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// ‖a − b‖ / ‖b‖ in f64; infinite when `a` holds a non-finite value or the lengths differ.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let b: Vec<f64> = b.iter().map(|&y| y as f64).collect();
    rel_err64(a, &b)
}

/// ‖a − b‖ / ‖b‖ against an f64 reference; infinite when `a` holds a non-finite value or the
/// lengths differ.
pub fn rel_err64(a: &[f32], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut d, mut r) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y).powi(2);
        r += y * y;
    }
    (d / r.max(f64::MIN_POSITIVE)).sqrt()
}

/// The bit patterns of `x`.
pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// fp32 -> bf16 bits, round to nearest, ties to even (finite inputs), written independently of
/// the kernels and of the `half` crate.
pub fn rne_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// fp32 -> bf16 -> fp32 by [`rne_bf16`].
pub fn rne_bf16_f32(x: f32) -> f32 {
    f32::from_bits((rne_bf16(x) as u32) << 16)
}

/// The host bf16 oracle checked on its own (runs without a GPU): hand-worked ties and carries,
/// then agreement with the `half` crate on random values.
pub fn bf16_oracle_rounds_to_nearest_even() -> Result<()> {
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
        let wide = rne_bf16_f32(f32::from_bits(x)).to_bits();
        ensure!(
            wide == (want as u32) << 16,
            "rne_bf16_f32({x:#010x}) = {wide:#010x}, expected {:#010x}",
            (want as u32) << 16
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..100_000 {
        let x = f32::from_bits(rng.random::<u32>() & 0xbfff_ffff); // finite: exponent < 255
        let want = half::bf16::from_f32(x).to_bits();
        ensure!(
            rne_bf16(x) == want,
            "rne_bf16({x:e}) disagrees with half: {want:#06x}"
        );
    }
    Ok(())
}

/// Device buffer holding `off` guard elements, then `data`, then 3 guard elements.
pub fn upload_guarded<T: DeviceRepr + Copy>(
    be: &CudaDevice,
    data: &[T],
    off: usize,
    guard: T,
) -> Result<CudaSlice<T>> {
    let mut host = vec![guard; off];
    host.extend_from_slice(data);
    host.extend_from_slice(&[guard; 3]);
    be.stream()
        .clone_htod(&host)
        .map_err(|e| anyhow!("upload: {e}"))
}

/// Downloads `buf`, checks every guard element is bit-for-bit intact and returns the `n`
/// elements after `off`.
pub fn download_guarded<T: DeviceRepr + bytemuck::Pod + std::fmt::Debug>(
    be: &CudaDevice,
    buf: &CudaSlice<T>,
    off: usize,
    n: usize,
    guard: T,
    what: &str,
) -> Result<Vec<T>> {
    let host = be
        .stream()
        .clone_dtoh(buf)
        .map_err(|e| anyhow!("download: {e}"))?;
    for (i, x) in host[..off].iter().chain(&host[off + n..]).enumerate() {
        ensure!(
            bytemuck::bytes_of(x) == bytemuck::bytes_of(&guard),
            "{what}: guard element {i} overwritten: {x:?}"
        );
    }
    Ok(host[off..off + n].to_vec())
}

/// Norm-wise limit for a bf16 output computed in fp32 and rounded once: rounding to nearest
/// moves each element by at most 2^-9 of itself, so ‖got − want‖/‖want‖ ≤ 2^-9 plus the fp32
/// math's own error (about 1e-5 here); 2^-8 leaves room for that and nothing more.
pub const BF16_STORE_TOL: f64 = 1.0 / 256.0;

/// `got` (bf16) is finite and within [`BF16_STORE_TOL`] of the f64 reference `want`.
pub fn check_bf16_close(ctx: &str, what: &str, got: &[bf16], want: &[f64]) -> Result<()> {
    ensure!(
        got.len() == want.len(),
        "{ctx}: {what}: lengths {} / {}",
        got.len(),
        want.len()
    );
    let g: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
    if let Some(i) = g.iter().position(|x| !x.is_finite()) {
        ensure!(false, "{ctx}: {what}[{i}] = {} is not finite", g[i]);
    }
    let e = rel_err64(&g, want);
    ensure!(
        e < BF16_STORE_TOL,
        "{ctx}: {what}: relative error {e:.3e} vs the f64 reference (limit {BF16_STORE_TOL:.3e}: \
         one bf16 rounding)"
    );
    Ok(())
}

/// `got` and `want` hold the same bits, element for element.
pub fn check_bits(ctx: &str, what: &str, got: &[f32], want: &[f32]) -> Result<()> {
    ensure!(
        got.len() == want.len(),
        "{ctx}: {what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let diff: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    ensure!(
        diff.is_empty(),
        "{ctx}: {what}: {} of {} elements differ in bits (first [{}]: {} vs {})",
        diff.len(),
        got.len(),
        diff[0],
        got[diff[0]],
        want[diff[0]]
    );
    Ok(())
}
