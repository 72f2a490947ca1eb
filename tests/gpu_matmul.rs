//! The tensor-core matmul kernels (`cuda/matmul.cu`) against the CPU reference GEMMs.
//!
//! Every test is always registered. Without a usable GPU (no kernels compiled, no libcuda, no
//! device, or no binary for it) the GPU tests are reported as *ignored*, never as passed; with
//! `BADDATA_GPU_REQUIRED=1` (set on the GPU machine) a missing GPU fails the whole run instead.
//!
//! Oracle: [`baddata::backend::cpu::matmul`] run in f64 on the inputs rounded to bf16 (round to
//! nearest even, by the `half` crate), i.e. the exact products the tensor cores see. The kernel
//! sums them in fp32, so only the summation order and fp32 rounding differ: the limit on
//! ‖out − ref‖ / ‖ref‖ is 1e-3 ([`TOL`]), ten times tighter than DESIGN's 1e-2 for bf16 ops. A
//! kernel that skipped the bf16 rounding (plain fp32 or tf32 products) is about 2e-3 away from
//! this reference on uniform inputs, so the limit also checks the rounding.
//!
//! Inputs are fresh uniform(−1, 1) values; shapes ragged (tails in m, n and k, odd k) and
//! aligned, up to an OLMo-1B qkv projection of 2048 tokens; each at view offset 0 (float4 loads
//! and stores) and at odd element offsets (scalar path). Inputs are surrounded by NaN, so a read
//! outside a view poisons the result; outputs are poisoned with NaN before the launch and carry
//! guard elements on both sides that must come back untouched.
//!
//! The output layer's variants (bf16 `y` forward, bf16 `dy` backward: the logits) are held to
//! their fp32 twins bit for bit: a bf16 `y` must be the fp32 `y` rounded to nearest even, and a
//! bf16 `dy` must give exactly what the same values widened to fp32 give.
//!
//! The parity tests run the executor's choice (`matmul::DEFAULT_VERSION`: the async version
//! from 256 rows, the staged one below); `matmul_versions_bit_identical` holds the two versions
//! to each other bit for bit on the shapes of [`SHAPES`] but the largest and one more, at input
//! offsets 0 and 1, fp32 and bf16 `y` / `dy`, both `accumulate` modes.

use anyhow::{anyhow, ensure, Result};
use baddata::backend::cpu::matmul as cpu_mm;
use baddata::backend::cuda::matmul::{MatmulKernels, MmVersion};
use baddata::backend::cuda::CudaDevice;
use cudarc::driver::CudaSlice;
use half::bf16;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "common/gpu.rs"]
mod gpu_common;

use gpu_common::{
    check_bits, download_guarded, host_test, rne_bf16, run_gpu_tests, uniform, upload_guarded,
    GpuTest, GUARD,
};

struct Gpu {
    be: CudaDevice,
    /// The executor's choice (`matmul::DEFAULT_VERSION`).
    mm: MatmulKernels,
    /// Each version on every product, whatever its size.
    staged: MatmulKernels,
    asynchronous: MatmulKernels,
}

fn main() {
    let tests: [(&str, GpuTest<Gpu>); 9] = [
        ("matmul_fwd_matches_cpu", matmul_fwd_matches_cpu),
        ("matmul_bwd_x_matches_cpu", matmul_bwd_x_matches_cpu),
        ("matmul_bwd_w_matches_cpu", matmul_bwd_w_matches_cpu),
        (
            "matmul_olmo_1b_qkv_matches_cpu",
            matmul_olmo_1b_qkv_matches_cpu,
        ),
        ("matmul_empty_dimensions", matmul_empty_dimensions),
        (
            "matmul_two_launches_bit_identical",
            matmul_two_launches_bit_identical,
        ),
        ("matmul_rejects_short_buffers", matmul_rejects_short_buffers),
        (
            "matmul_bf16_logit_variants_equal_fp32_twins",
            matmul_bf16_logit_variants_equal_fp32_twins,
        ),
        (
            "matmul_versions_bit_identical",
            matmul_versions_bit_identical,
        ),
    ];
    let host_tests = vec![host_test(
        "cpu_reference_matches_naive_loop",
        cpu_reference_matches_naive_loop,
    )];
    let setup = || {
        let be = CudaDevice::open(0)?;
        let mm = MatmulKernels::new(&be)?;
        let staged = MatmulKernels::with_version(&be, MmVersion::Staged)?;
        let asynchronous = MatmulKernels::with_version(&be, MmVersion::Async)?;
        let device = be.describe();
        Ok((
            Gpu {
                be,
                mm,
                staged,
                asynchronous,
            },
            device,
        ))
    };
    run_gpu_tests("gpu matmul", setup, host_tests, &tests)
}

// ---------------------------------------------------------------------------------------------
// helpers

/// Limit on ‖out − ref‖ / ‖ref‖ against the f64 reference on bf16-rounded inputs.
const TOL: f64 = 1e-3;

/// (m, k, n): ragged (tails in every dimension, odd k, more than one tile each way) and
/// aligned.
const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (7, 13, 5),
    (65, 33, 129),
    (127, 257, 63),
    (200, 96, 300),
    (300, 77, 131),
    (256, 256, 256),
    (512, 768, 2304),
];

/// An OLMo-1B qkv projection over 2048 tokens (m, k, n), checked by its own test
/// ([`matmul_olmo_1b_qkv_matches_cpu`]): by far the slowest shape where kernels run on a host.
const OLMO_QKV: (usize, usize, usize) = (2048, 2048, 6144);

/// (input view offset, output view offset) in elements: 0 gives 16-byte-aligned views (float4
/// loads and stores where the row length allows), the odd ones the scalar path.
const OFFSETS: [(usize, usize); 2] = [(0, 0), (1, 3)];

/// Guard elements after every buffer (the leading ones are the view offset, at least
/// [`MIN_LEAD`]).
const TAIL: usize = 5;
/// Leading guard elements before an output view even at offset 0 (a multiple of 4, so the view
/// stays 16-byte aligned).
const MIN_LEAD: usize = 4;

/// The values the tensor cores multiply: each input rounded to bf16 (RNE), widened to f64.
fn bf16_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect()
}

/// ‖a − b‖ / ‖b‖ against an f64 reference, with the index of the largest element error.
fn rel_err(a: &[f32], b: &[f64]) -> (f64, usize) {
    let (mut d, mut r, mut worst, mut at) = (0f64, 0f64, 0f64, 0usize);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let e = (x as f64 - y).abs();
        if e > worst {
            worst = e;
            at = i;
        }
        d += e * e;
        r += y * y;
    }
    ((d / r.max(f64::MIN_POSITIVE)).sqrt(), at)
}

/// `got` is finite and within [`TOL`] of `want`; errors name the case and the worst element of
/// a `[rows, cols]` output.
fn check_close(ctx: &str, got: &[f32], want: &[f64], cols: usize) -> Result<()> {
    ensure!(
        got.len() == want.len(),
        "{ctx}: {} outputs, expected {}",
        got.len(),
        want.len()
    );
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        ensure!(
            false,
            "{ctx}: output [{}, {}] = {} is not finite (left poisoned, or an input read outside \
             its view)",
            i / cols,
            i % cols,
            got[i]
        );
    }
    let (e, at) = rel_err(got, want);
    ensure!(
        e < TOL,
        "{ctx}: relative error {e:e} against the f64 reference on bf16-rounded inputs (limit \
         {TOL:e}); worst element [{}, {}]: got {}, expected {}",
        at / cols,
        at % cols,
        got[at],
        want[at]
    );
    Ok(())
}

/// Device copy of an input: `off` NaNs, `data`, [`TAIL`] NaNs (an out-of-view read shows up as a
/// NaN in the result). The view is `off..off + data.len()`.
fn upload_input(gpu: &Gpu, data: &[f32], off: usize) -> Result<CudaSlice<f32>> {
    let mut host = vec![f32::NAN; off];
    host.extend_from_slice(data);
    host.extend_from_slice(&[f32::NAN; TAIL]);
    gpu.be
        .stream()
        .clone_htod(&host)
        .map_err(|e| anyhow!("upload: {e}"))
}

/// Device output: `lead` guards, `payload` (NaN poison, or a prior value to accumulate onto),
/// [`TAIL`] guards. The view is `lead..lead + payload.len()`.
fn upload_output(gpu: &Gpu, payload: &[f32], lead: usize) -> Result<CudaSlice<f32>> {
    let mut host = vec![GUARD; lead];
    host.extend_from_slice(payload);
    host.extend_from_slice(&[GUARD; TAIL]);
    gpu.be
        .stream()
        .clone_htod(&host)
        .map_err(|e| anyhow!("upload: {e}"))
}

/// Downloads an output buffer, checks every guard element is bit-for-bit intact and returns the
/// `n` elements of the view at `lead`.
fn download_output(
    gpu: &Gpu,
    buf: &CudaSlice<f32>,
    lead: usize,
    n: usize,
    ctx: &str,
) -> Result<Vec<f32>> {
    let host = gpu
        .be
        .stream()
        .clone_dtoh(buf)
        .map_err(|e| anyhow!("download: {e}"))?;
    ensure!(
        host.len() == lead + n + TAIL,
        "{ctx}: buffer length changed"
    );
    for (i, &x) in host.iter().enumerate() {
        if (i < lead || i >= lead + n) && x.to_bits() != GUARD.to_bits() {
            let pos = if i < lead {
                format!("{} before", lead - i)
            } else {
                format!("{} after", i - lead - n + 1)
            };
            ensure!(
                false,
                "{ctx}: guard element {pos} the output was overwritten: {x}"
            );
        }
    }
    Ok(host[lead..lead + n].to_vec())
}

/// Output lead for a view offset: at least [`MIN_LEAD`] guards, alignment kept for offset 0.
fn out_lead(off: usize) -> usize {
    MIN_LEAD + off
}

/// Fresh inputs for one shape: x [m, k], W [n, k], dy [m, n].
struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
}

fn inputs(seed: u64, m: usize, k: usize, n: usize) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Inputs {
        x: uniform(&mut rng, m * k, -1.0, 1.0),
        w: uniform(&mut rng, n * k, -1.0, 1.0),
        dy: uniform(&mut rng, m * n, -1.0, 1.0),
    }
}

// ---------------------------------------------------------------------------------------------
// tests

/// The oracle itself: the CPU GEMMs in f64 against a naive triple loop written here, on a small
/// ragged shape, all three products (and accumulate). Needs no GPU.
fn cpu_reference_matches_naive_loop() -> Result<()> {
    let (m, k, n) = (13usize, 7usize, 10usize);
    let inp = inputs(1, m, k, n);
    let (x, w, dy) = (bf16_f64(&inp.x), bf16_f64(&inp.w), bf16_f64(&inp.dy));
    let close = |what: &str, a: &[f64], b: &[f64]| -> Result<()> {
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            ensure!(
                (p - q).abs() <= 1e-12 * (1.0 + q.abs()),
                "{what}[{i}]: CPU reference {p}, naive loop {q}"
            );
        }
        Ok(())
    };
    let mut y = vec![f64::NAN; m * n];
    cpu_mm::forward(&mut y, &x, &w, m, k, n);
    let mut naive = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            naive[i * n + j] = (0..k).map(|r| x[i * k + r] * w[j * k + r]).sum();
        }
    }
    close("forward", &y, &naive)?;
    let mut dx = vec![f64::NAN; m * k];
    cpu_mm::backward_x(&mut dx, &dy, &w, m, k, n);
    let mut naive = vec![0.0; m * k];
    for i in 0..m {
        for c in 0..k {
            naive[i * k + c] = (0..n).map(|j| dy[i * n + j] * w[j * k + c]).sum();
        }
    }
    close("backward_x", &dx, &naive)?;
    let prior: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.37).sin()).collect();
    let mut dw = prior.clone();
    cpu_mm::backward_w(&mut dw, &dy, &x, m, k, n, true);
    let mut naive = prior;
    for j in 0..n {
        for c in 0..k {
            naive[j * k + c] += (0..m).map(|i| dy[i * n + j] * x[i * k + c]).sum::<f64>();
        }
    }
    close("backward_w accumulate", &dw, &naive)
}

/// y = x · Wᵀ at every shape and offset pair.
fn matmul_fwd_matches_cpu(gpu: &Gpu) -> Result<()> {
    for (si, &shape) in SHAPES.iter().enumerate() {
        check_fwd(gpu, si, shape)?;
    }
    Ok(())
}

/// The forward at shape `(m, k, n)` and both offset pairs; `si` seeds the inputs.
fn check_fwd(gpu: &Gpu, si: usize, (m, k, n): (usize, usize, usize)) -> Result<()> {
    let inp = inputs(100 + si as u64, m, k, n);
    let mut want = vec![0.0f64; m * n];
    cpu_mm::forward(&mut want, &bf16_f64(&inp.x), &bf16_f64(&inp.w), m, k, n);
    for &(oi, oo) in &OFFSETS {
        let ctx = format!("matmul_fwd m={m} k={k} n={n} offsets in={oi} out={oo}");
        let dx = upload_input(gpu, &inp.x, oi)?;
        let dw = upload_input(gpu, &inp.w, oi)?;
        let lead = out_lead(oo);
        let mut dy = upload_output(gpu, &vec![f32::NAN; m * n], lead)?;
        gpu.mm.forward(
            &mut dy.slice_mut(lead..lead + m * n),
            &dx.slice(oi..oi + m * k),
            &dw.slice(oi..oi + n * k),
            m,
            k,
            n,
        )?;
        let got = download_output(gpu, &dy, lead, m * n, &ctx)?;
        check_close(&ctx, &got, &want, n)?;
    }
    Ok(())
}

/// dx = dy · W at every shape and offset pair.
fn matmul_bwd_x_matches_cpu(gpu: &Gpu) -> Result<()> {
    for (si, &shape) in SHAPES.iter().enumerate() {
        check_bwd_x(gpu, si, shape)?;
    }
    Ok(())
}

/// dX at shape `(m, k, n)` and both offset pairs; `si` seeds the inputs.
fn check_bwd_x(gpu: &Gpu, si: usize, (m, k, n): (usize, usize, usize)) -> Result<()> {
    let inp = inputs(200 + si as u64, m, k, n);
    let mut want = vec![0.0f64; m * k];
    cpu_mm::backward_x(&mut want, &bf16_f64(&inp.dy), &bf16_f64(&inp.w), m, k, n);
    for &(oi, oo) in &OFFSETS {
        let ctx = format!("matmul_bwd_x m={m} k={k} n={n} offsets in={oi} out={oo}");
        let ddy = upload_input(gpu, &inp.dy, oi)?;
        let dw = upload_input(gpu, &inp.w, oi)?;
        let lead = out_lead(oo);
        let mut ddx = upload_output(gpu, &vec![f32::NAN; m * k], lead)?;
        gpu.mm.backward_x(
            &mut ddx.slice_mut(lead..lead + m * k),
            &ddy.slice(oi..oi + m * n),
            &dw.slice(oi..oi + n * k),
            m,
            k,
            n,
        )?;
        let got = download_output(gpu, &ddx, lead, m * k, &ctx)?;
        check_close(&ctx, &got, &want, k)?;
    }
    Ok(())
}

/// dW = dyᵀ · x (overwrite, into NaN poison) and dW += dyᵀ · x onto a random prior, at every
/// shape and offset pair.
fn matmul_bwd_w_matches_cpu(gpu: &Gpu) -> Result<()> {
    for (si, &shape) in SHAPES.iter().enumerate() {
        check_bwd_w(gpu, si, shape)?;
    }
    Ok(())
}

/// All three products at the OLMo-1B qkv shape, both offset pairs (seeded as the next shape
/// after [`SHAPES`]).
fn matmul_olmo_1b_qkv_matches_cpu(gpu: &Gpu) -> Result<()> {
    let si = SHAPES.len();
    check_fwd(gpu, si, OLMO_QKV)?;
    check_bwd_x(gpu, si, OLMO_QKV)?;
    check_bwd_w(gpu, si, OLMO_QKV)
}

/// dW, overwrite and accumulate, at shape `(m, k, n)` and both offset pairs; `si` seeds the
/// inputs and the prior.
fn check_bwd_w(gpu: &Gpu, si: usize, (m, k, n): (usize, usize, usize)) -> Result<()> {
    let inp = inputs(300 + si as u64, m, k, n);
    let (dy64, x64) = (bf16_f64(&inp.dy), bf16_f64(&inp.x));
    let mut rng = ChaCha8Rng::seed_from_u64(400 + si as u64);
    let prior = uniform(&mut rng, n * k, -2.0, 2.0);
    for accumulate in [false, true] {
        let mut want: Vec<f64> = if accumulate {
            prior.iter().map(|&v| v as f64).collect()
        } else {
            vec![0.0; n * k]
        };
        cpu_mm::backward_w(&mut want, &dy64, &x64, m, k, n, accumulate);
        for &(oi, oo) in &OFFSETS {
            let ctx = format!(
                "matmul_bwd_w m={m} k={k} n={n} accumulate={accumulate} offsets in={oi} \
                 out={oo}"
            );
            let ddy = upload_input(gpu, &inp.dy, oi)?;
            let dx = upload_input(gpu, &inp.x, oi)?;
            let lead = out_lead(oo);
            let start = if accumulate {
                prior.clone()
            } else {
                vec![f32::NAN; n * k]
            };
            let mut ddw = upload_output(gpu, &start, lead)?;
            gpu.mm.backward_w(
                &mut ddw.slice_mut(lead..lead + n * k),
                &ddy.slice(oi..oi + m * n),
                &dx.slice(oi..oi + m * k),
                m,
                k,
                n,
                accumulate,
            )?;
            let got = download_output(gpu, &ddw, lead, n * k, &ctx)?;
            check_close(&ctx, &got, &want, k)?;
        }
    }
    Ok(())
}

/// Zero-length dimensions: an empty reduction writes zeros (accumulate: leaves dW exactly as it
/// was); an empty output touches nothing (guards intact).
fn matmul_empty_dimensions(gpu: &Gpu) -> Result<()> {
    let (a, b) = (37usize, 45usize);
    let empty = upload_input(gpu, &[], 1)?;
    let ev = || empty.slice(1..1);
    let zeros = |ctx: &str, got: &[f32]| -> Result<()> {
        if let Some(i) = got.iter().position(|v| v.to_bits() != 0) {
            ensure!(false, "{ctx}: element {i} is {}, expected +0", got[i]);
        }
        Ok(())
    };
    // fwd with k = 0: y [a, b] = 0.
    let mut y = upload_output(gpu, &vec![f32::NAN; a * b], 5)?;
    gpu.mm
        .forward(&mut y.slice_mut(5..5 + a * b), &ev(), &ev(), a, 0, b)?;
    zeros(
        "matmul_fwd k=0",
        &download_output(gpu, &y, 5, a * b, "matmul_fwd k=0")?,
    )?;
    // bwd_x with n = 0: dx [a, b] = 0.
    let mut dx = upload_output(gpu, &vec![f32::NAN; a * b], 4)?;
    gpu.mm
        .backward_x(&mut dx.slice_mut(4..4 + a * b), &ev(), &ev(), a, b, 0)?;
    zeros(
        "matmul_bwd_x n=0",
        &download_output(gpu, &dx, 4, a * b, "matmul_bwd_x n=0")?,
    )?;
    // bwd_w with m = 0: dW [a, b] = 0, or the prior unchanged with accumulate.
    let mut dw = upload_output(gpu, &vec![f32::NAN; a * b], 4)?;
    gpu.mm.backward_w(
        &mut dw.slice_mut(4..4 + a * b),
        &ev(),
        &ev(),
        0,
        b,
        a,
        false,
    )?;
    zeros(
        "matmul_bwd_w m=0",
        &download_output(gpu, &dw, 4, a * b, "matmul_bwd_w m=0")?,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(500);
    let prior = uniform(&mut rng, a * b, -1.0, 1.0);
    let mut dw = upload_output(gpu, &prior, 3)?;
    gpu.mm
        .backward_w(&mut dw.slice_mut(3..3 + a * b), &ev(), &ev(), 0, b, a, true)?;
    let got = download_output(gpu, &dw, 3, a * b, "matmul_bwd_w m=0 accumulate")?;
    ensure!(
        got.iter()
            .zip(&prior)
            .all(|(g, p)| g.to_bits() == p.to_bits()),
        "matmul_bwd_w m=0 accumulate: dW changed"
    );
    // Empty outputs (m = 0 for fwd and bwd_x, n = 0 or k = 0 for bwd_w): nothing is written.
    let x = upload_input(gpu, &uniform(&mut rng, a * b, -1.0, 1.0), 0)?;
    let mut out = upload_output(gpu, &[], 4)?;
    gpu.mm
        .forward(&mut out.slice_mut(4..4), &ev(), &x.slice(0..a * b), 0, b, a)?;
    gpu.mm
        .backward_x(&mut out.slice_mut(4..4), &ev(), &x.slice(0..a * b), 0, b, a)?;
    gpu.mm.backward_w(
        &mut out.slice_mut(4..4),
        &ev(),
        &x.slice(0..a * b),
        a * b,
        0,
        0,
        true,
    )?;
    download_output(gpu, &out, 4, 0, "empty outputs")?;
    Ok(())
}

/// Each op launched twice on the OLMo-1B qkv shape gives the same bits (one block per output tile,
/// fixed summation order, no atomics).
fn matmul_two_launches_bit_identical(gpu: &Gpu) -> Result<()> {
    let (m, k, n) = OLMO_QKV;
    let inp = inputs(600, m, k, n);
    let s = gpu.be.stream();
    let e = |e| anyhow!("{e}");
    let x = s.clone_htod(&inp.x).map_err(e)?;
    let w = s.clone_htod(&inp.w).map_err(e)?;
    let dy = s.clone_htod(&inp.dy).map_err(e)?;
    let mut rng = ChaCha8Rng::seed_from_u64(601);
    let prior = uniform(&mut rng, n * k, -1.0, 1.0);
    let run = || -> Result<[Vec<u32>; 3]> {
        let mut y = s.alloc_zeros::<f32>(m * n).map_err(e)?;
        let mut dx = s.alloc_zeros::<f32>(m * k).map_err(e)?;
        let mut dw = s.clone_htod(&prior).map_err(e)?;
        gpu.mm
            .forward(&mut y.as_view_mut(), &x.as_view(), &w.as_view(), m, k, n)?;
        gpu.mm
            .backward_x(&mut dx.as_view_mut(), &dy.as_view(), &w.as_view(), m, k, n)?;
        gpu.mm.backward_w(
            &mut dw.as_view_mut(),
            &dy.as_view(),
            &x.as_view(),
            m,
            k,
            n,
            true,
        )?;
        let bits = |b: &CudaSlice<f32>| -> Result<Vec<u32>> {
            Ok(s.clone_dtoh(b)
                .map_err(e)?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        Ok([bits(&y)?, bits(&dx)?, bits(&dw)?])
    };
    let a = run()?;
    let b = run()?;
    for (i, what) in [
        "matmul_fwd y",
        "matmul_bwd_x dx",
        "matmul_bwd_w dW (accumulate)",
    ]
    .iter()
    .enumerate()
    {
        let diff = a[i].iter().zip(&b[i]).filter(|(p, q)| p != q).count();
        ensure!(
            diff == 0,
            "{what}: {diff} of {} elements differ between two launches",
            a[i].len()
        );
    }
    Ok(())
}

/// Every launcher refuses each buffer shorter than its shape needs, with an error naming it.
fn matmul_rejects_short_buffers(gpu: &Gpu) -> Result<()> {
    let (m, k, n) = (6usize, 5usize, 4usize);
    let s = gpu.be.stream();
    let e = |e| anyhow!("{e}");
    let buf = |len: usize| s.alloc_zeros::<f32>(len).map_err(e);
    let (mk, nk, mn) = (m * k, n * k, m * n);
    let expect_err = |what: &str, r: Result<()>| -> Result<()> {
        let err = r
            .err()
            .ok_or_else(|| anyhow!("{what}: a short buffer was accepted"))?;
        let msg = format!("{err:#}");
        ensure!(
            msg.contains(what),
            "{what}: the error does not name the buffer: {msg}"
        );
        Ok(())
    };
    let (x, w, dy) = (buf(mk)?, buf(nk)?, buf(mn)?);
    let (xs, ws, dys) = (buf(mk - 1)?, buf(nk - 1)?, buf(mn - 1)?);
    let (mut y, mut dx, mut dw) = (buf(mn)?, buf(mk)?, buf(nk)?);
    let (mut ys, mut dxs, mut dws) = (buf(mn - 1)?, buf(mk - 1)?, buf(nk - 1)?);
    let mm = &gpu.mm;
    let (xv, wv, dyv) = (x.as_view(), w.as_view(), dy.as_view());
    expect_err(
        "matmul_fwd y",
        mm.forward(&mut ys.as_view_mut(), &xv, &wv, m, k, n),
    )?;
    expect_err(
        "matmul_fwd x",
        mm.forward(&mut y.as_view_mut(), &xs.as_view(), &wv, m, k, n),
    )?;
    expect_err(
        "matmul_fwd w",
        mm.forward(&mut y.as_view_mut(), &xv, &ws.as_view(), m, k, n),
    )?;
    expect_err(
        "matmul_bwd_x dx",
        mm.backward_x(&mut dxs.as_view_mut(), &dyv, &wv, m, k, n),
    )?;
    expect_err(
        "matmul_bwd_x dy",
        mm.backward_x(&mut dx.as_view_mut(), &dys.as_view(), &wv, m, k, n),
    )?;
    expect_err(
        "matmul_bwd_x w",
        mm.backward_x(&mut dx.as_view_mut(), &dyv, &ws.as_view(), m, k, n),
    )?;
    for acc in [false, true] {
        expect_err(
            "matmul_bwd_w dw",
            mm.backward_w(&mut dws.as_view_mut(), &dyv, &xv, m, k, n, acc),
        )?;
        expect_err(
            "matmul_bwd_w dy",
            mm.backward_w(&mut dw.as_view_mut(), &dys.as_view(), &xv, m, k, n, acc),
        )?;
        expect_err(
            "matmul_bwd_w x",
            mm.backward_w(&mut dw.as_view_mut(), &dyv, &xs.as_view(), m, k, n, acc),
        )?;
    }
    // The full-length buffers are accepted (the checks above failed for the right reason).
    mm.forward(&mut y.as_view_mut(), &xv, &wv, m, k, n)?;
    mm.backward_x(&mut dx.as_view_mut(), &dyv, &wv, m, k, n)?;
    mm.backward_w(&mut dw.as_view_mut(), &dyv, &xv, m, k, n, true)?;
    gpu.be.synchronize()
}

/// The bf16 variants against their fp32 twins, bit for bit, on ragged and aligned shapes with
/// the bf16 views at element offset 0 (16-byte vector path), 4 (8-byte aligned: vector loads,
/// scalar stores) and 1 (scalar path); guards around every bf16 output must stay untouched.
fn matmul_bf16_logit_variants_equal_fp32_twins(gpu: &Gpu) -> Result<()> {
    let s = gpu.be.stream();
    let e = |e| anyhow!("{e}");
    let guard = bf16::from_f32(GUARD);
    let cases = [
        ((130usize, 40usize, 264usize), 0usize),
        ((130, 40, 264), 4),
        ((130, 40, 264), 1),
        ((65, 33, 129), 0),
        ((512, 768, 2304), 0),
        ((300, 77, 131), 1),
    ];
    for (ci, &((m, k, n), off)) in cases.iter().enumerate() {
        let ctx = format!("bf16 variants m={m} k={k} n={n} bf16 offset={off}");
        let inp = inputs(900 + ci as u64, m, k, n);
        let x = s.clone_htod(&inp.x).map_err(e)?;
        let w = s.clone_htod(&inp.w).map_err(e)?;
        // Forward: bf16 y == rne(fp32 y).
        let mut y32 = s.alloc_zeros::<f32>(m * n).map_err(e)?;
        gpu.mm
            .forward(&mut y32.as_view_mut(), &x.as_view(), &w.as_view(), m, k, n)?;
        let mut y16 = upload_guarded(&gpu.be, &vec![bf16::NAN; m * n], off, guard)?;
        gpu.mm.forward(
            &mut y16.slice_mut(off..off + m * n),
            &x.as_view(),
            &w.as_view(),
            m,
            k,
            n,
        )?;
        let y32 = s.clone_dtoh(&y32).map_err(e)?;
        let y16 = download_guarded(&gpu.be, &y16, off, m * n, guard, &ctx)?;
        let bad = y16
            .iter()
            .zip(&y32)
            .filter(|(a, b)| a.to_bits() != rne_bf16(**b))
            .count();
        ensure!(
            bad == 0,
            "{ctx}: fwd: {bad} of {} elements are not rne(fp32 y)",
            m * n
        );

        // Backward: a bf16 dy and its fp32 widening give the same bits.
        let dyb: Vec<bf16> = inp.dy.iter().map(|&a| bf16::from_f32(a)).collect();
        let dyw: Vec<f32> = dyb.iter().map(|a| a.to_f32()).collect();
        let dy16 = upload_guarded(&gpu.be, &dyb, off, guard)?;
        let dy16 = dy16.slice(off..off + m * n);
        let dy32 = s.clone_htod(&dyw).map_err(e)?;
        let mut a = s.alloc_zeros::<f32>(m * k).map_err(e)?;
        let mut b = s.alloc_zeros::<f32>(m * k).map_err(e)?;
        gpu.mm
            .backward_x(&mut a.as_view_mut(), &dy32.as_view(), &w.as_view(), m, k, n)?;
        gpu.mm
            .backward_x(&mut b.as_view_mut(), &dy16, &w.as_view(), m, k, n)?;
        check_bits(
            &ctx,
            "bwd_x vs its fp32 twin",
            &s.clone_dtoh(&b).map_err(e)?,
            &s.clone_dtoh(&a).map_err(e)?,
        )?;
        let prior = uniform(
            &mut ChaCha8Rng::seed_from_u64(950 + ci as u64),
            n * k,
            -1.0,
            1.0,
        );
        for acc in [false, true] {
            let mut a = s.clone_htod(&prior).map_err(e)?;
            let mut b = s.clone_htod(&prior).map_err(e)?;
            gpu.mm.backward_w(
                &mut a.as_view_mut(),
                &dy32.as_view(),
                &x.as_view(),
                m,
                k,
                n,
                acc,
            )?;
            gpu.mm
                .backward_w(&mut b.as_view_mut(), &dy16, &x.as_view(), m, k, n, acc)?;
            let what = format!("bwd_w accumulate={acc} vs its fp32 twin");
            check_bits(
                &ctx,
                &what,
                &s.clone_dtoh(&b).map_err(e)?,
                &s.clone_dtoh(&a).map_err(e)?,
            )?;
        }
    }
    Ok(())
}

/// The two kernel versions ([`MmVersion`]) give the same bits: fp32 `y` and bf16 `y` forward,
/// `dx` from fp32 and from bf16 `dy` (at offset 0 the async version reads a bf16 `dy` of a
/// suitable width as it is; at offset 1 it copies it), `dW` overwriting and accumulating, on
/// the shapes of [`SHAPES`] and both input offsets.
fn matmul_versions_bit_identical(gpu: &Gpu) -> Result<()> {
    let s = gpu.be.stream();
    let e = |e| anyhow!("{e}");
    let (a, b) = (&gpu.staged, &gpu.asynchronous);
    // SHAPES but the largest (slow where the kernels run on a host), and a width that is a
    // multiple of 8 (a bf16 dy at offset 0 is then read as it is).
    let shapes = SHAPES
        .iter()
        .filter(|s| s.0 * s.1 * s.2 < 1 << 26)
        .chain(&[(130, 40, 264)]);
    for (si, &(m, k, n)) in shapes.enumerate() {
        for off in [0usize, 1] {
            let ctx = format!(
                "versions {:?} vs {:?}, m={m} k={k} n={n} input offset={off}",
                a.version(),
                b.version()
            );
            let inp = inputs(1200 + si as u64, m, k, n);
            let up = |v: &[f32]| -> Result<CudaSlice<f32>> {
                let mut h = vec![f32::NAN; off];
                h.extend_from_slice(v);
                s.clone_htod(&h).map_err(e)
            };
            let (x, w, dy) = (up(&inp.x)?, up(&inp.w)?, up(&inp.dy)?);
            let (x, w, dy) = (x.slice(off..), w.slice(off..), dy.slice(off..));
            let mut dyb = vec![bf16::NAN; off];
            dyb.extend(inp.dy.iter().map(|&v| bf16::from_f32(v)));
            let dyb = s.clone_htod(&dyb).map_err(e)?;
            let dyb = dyb.slice(off..);
            let down = |v: &CudaSlice<f32>| s.clone_dtoh(v).map_err(e);

            let (mut ya, mut yb) = (
                s.alloc_zeros::<f32>(m * n).map_err(e)?,
                s.alloc_zeros::<f32>(m * n).map_err(e)?,
            );
            a.forward(&mut ya.as_view_mut(), &x, &w, m, k, n)?;
            b.forward(&mut yb.as_view_mut(), &x, &w, m, k, n)?;
            check_bits(&ctx, "fwd", &down(&yb)?, &down(&ya)?)?;
            let mut ha = s.alloc_zeros::<bf16>(m * n).map_err(e)?;
            let mut hb = s.alloc_zeros::<bf16>(m * n).map_err(e)?;
            a.forward(&mut ha.as_view_mut(), &x, &w, m, k, n)?;
            b.forward(&mut hb.as_view_mut(), &x, &w, m, k, n)?;
            let (ha, hb) = (s.clone_dtoh(&ha).map_err(e)?, s.clone_dtoh(&hb).map_err(e)?);
            let bad = ha
                .iter()
                .zip(&hb)
                .filter(|(p, q)| p.to_bits() != q.to_bits())
                .count();
            ensure!(
                bad == 0,
                "{ctx}: fwd bf16 y: {bad} of {} elements differ",
                m * n
            );

            for bf in [false, true] {
                let what = if bf { "bf16 dy" } else { "fp32 dy" };
                let (mut da, mut db) = (
                    s.alloc_zeros::<f32>(m * k).map_err(e)?,
                    s.alloc_zeros::<f32>(m * k).map_err(e)?,
                );
                if bf {
                    a.backward_x(&mut da.as_view_mut(), &dyb, &w, m, k, n)?;
                    b.backward_x(&mut db.as_view_mut(), &dyb, &w, m, k, n)?;
                } else {
                    a.backward_x(&mut da.as_view_mut(), &dy, &w, m, k, n)?;
                    b.backward_x(&mut db.as_view_mut(), &dy, &w, m, k, n)?;
                }
                check_bits(&ctx, &format!("bwd_x, {what}"), &down(&db)?, &down(&da)?)?;
                let prior = uniform(
                    &mut ChaCha8Rng::seed_from_u64(1300 + si as u64),
                    n * k,
                    -1.0,
                    1.0,
                );
                for acc in [false, true] {
                    let (mut wa, mut wb) = (
                        s.clone_htod(&prior).map_err(e)?,
                        s.clone_htod(&prior).map_err(e)?,
                    );
                    if bf {
                        a.backward_w(&mut wa.as_view_mut(), &dyb, &x, m, k, n, acc)?;
                        b.backward_w(&mut wb.as_view_mut(), &dyb, &x, m, k, n, acc)?;
                    } else {
                        a.backward_w(&mut wa.as_view_mut(), &dy, &x, m, k, n, acc)?;
                        b.backward_w(&mut wb.as_view_mut(), &dy, &x, m, k, n, acc)?;
                    }
                    check_bits(
                        &ctx,
                        &format!("bwd_w accumulate={acc}, {what}"),
                        &down(&wb)?,
                        &down(&wa)?,
                    )?;
                }
            }
        }
    }
    Ok(())
}
