//! The CUDA flash-attention kernels (`cuda/attention.cu`, launched by
//! `baddata::backend::cuda::attention::AttentionKernels`) against the CPU reference
//! (`baddata::backend::cpu::attention`) run in f64.
//!
//! Every test is always registered. Without a usable GPU (no kernels compiled, no libcuda, no
//! device, or no binary for it) they are reported as *ignored*, never as passed; with
//! `BADDATA_GPU_REQUIRED=1` (set on the GPU machine) a missing GPU fails the whole run instead.
//!
//! Inputs are fresh random fp32 values (never zeros): q and k uniform in ±√6 so the scaled
//! scores q·k/√dh have a standard deviation of about 2, v and dz uniform in ±1. The GPU gets the
//! fp32 values and rounds q, k, v, dz to bf16 itself; the reference is fed the same values
//! rounded to bf16 (round to nearest even, by a host oracle written here). Tolerance: norm-wise
//! relative error ‖gpu − ref‖/‖ref‖ under 1e-2 (the design's bound for bf16 ops) for z, lse and
//! each third of dqkv (dq, dk, dv), the measured value in every failure message. Outputs are
//! poisoned with NaN before each launch; every buffer has guard elements on both sides that
//! must come back untouched; some shapes use views offset by one element (the kernels' scalar
//! load/store path). Shapes (B, T, H, dh) include T = 1 and T not a multiple of the 64-row tile.

use anyhow::{anyhow, ensure, Context, Result};
use baddata::backend::cpu::attention as cpu_attn;
use baddata::backend::cuda::attention::AttentionKernels;
use baddata::backend::cuda::CudaDevice;
use baddata::backend::AttnShape;
use cudarc::driver::CudaSlice;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "common/gpu.rs"]
mod gpu_common;

use gpu_common::{
    bf16_oracle_rounds_to_nearest_even, download_guarded, host_test, rne_bf16_f32, run_gpu_tests,
    uniform, upload_guarded, GpuTest, GUARD,
};

struct Gpu {
    be: CudaDevice,
    k: AttentionKernels,
}

fn main() {
    let tests: [(&str, GpuTest<Gpu>); 5] = [
        ("attention_fwd_matches_cpu", attention_fwd_matches_cpu),
        ("attention_bwd_matches_cpu", attention_bwd_matches_cpu),
        (
            "attention_two_launches_bit_identical",
            attention_two_launches_bit_identical,
        ),
        (
            "attention_shift_equals_z_plus_shift",
            attention_shift_equals_z_plus_shift,
        ),
        (
            "attention_rejects_bad_dh_and_short_buffers",
            attention_rejects_bad_dh_and_short_buffers,
        ),
    ];
    let host_tests = vec![host_test(
        "bf16_oracle_rounds_to_nearest_even",
        bf16_oracle_rounds_to_nearest_even,
    )];
    let setup = || {
        let be = CudaDevice::open(0)?;
        let k = AttentionKernels::new(&be)?;
        let device = be.describe();
        Ok((Gpu { be, k }, device))
    };
    run_gpu_tests("gpu attention", setup, host_tests, &tests)
}

// ---------------------------------------------------------------------------------------------
// utilities

/// (B, T, H, dh, view offset in elements).
const SHAPES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 1, 1, 64, 0),
    (2, 7, 3, 64, 1),
    (1, 65, 2, 128, 0),
    (2, 130, 4, 64, 0),
    (1, 257, 2, 128, 1),
    (2, 512, 4, 64, 0),
    (1, 1024, 16, 128, 0),
];
const TOL: f64 = 1e-2;

fn shape(b: usize, t: usize, h: usize, dh: usize) -> AttnShape {
    AttnShape { b, t, h, dh }
}

/// Fresh inputs for shape `s`: `qkv` `[B, T, 3D]` (q, k in ±√6, v in ±1), `dz` `[B, T, D]` in
/// ±1, `shift` `[D]` in ±1.
struct Inputs {
    qkv: Vec<f32>,
    dz: Vec<f32>,
    shift: Vec<f32>,
}

fn inputs(seed: u64, s: AttnShape) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, d) = (s.n(), s.d());
    let a = 6f32.sqrt();
    let mut qkv = Vec::with_capacity(n * 3 * d);
    for _ in 0..n {
        qkv.extend(uniform(&mut rng, 2 * d, -a, a));
        qkv.extend(uniform(&mut rng, d, -1.0, 1.0));
    }
    Inputs {
        qkv,
        dz: uniform(&mut rng, n * d, -1.0, 1.0),
        shift: uniform(&mut rng, d, -1.0, 1.0),
    }
}

fn to_f64_bf16(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| rne_bf16_f32(v) as f64).collect()
}

/// A NaN-poisoned output of `n` elements with guards.
fn poisoned(gpu: &Gpu, n: usize, off: usize) -> Result<CudaSlice<f32>> {
    upload_guarded(&gpu.be, &vec![f32::NAN; n], off, GUARD)
}

/// ‖a − b‖ / ‖b‖ over the elements `pick` selects, and ‖b‖ (f64).
fn rel_err_by(a: &[f32], b: &[f64], pick: impl Fn(usize) -> bool) -> (f64, f64) {
    let (mut d, mut r) = (0f64, 0f64);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if pick(i) {
            d += (x as f64 - y).powi(2);
            r += y * y;
        }
    }
    ((d / r.max(f64::MIN_POSITIVE)).sqrt(), r.sqrt())
}

/// Checks `got` is finite and within [`TOL`] of `want`.
fn check_close(got: &[f32], want: &[f64], what: &str) -> Result<()> {
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        anyhow::bail!("{what}: element {i} is {} (not finite)", got[i]);
    }
    let (e, _) = rel_err_by(got, want, |_| true);
    ensure!(
        e < TOL,
        "{what}: relative error {e:.3e} >= {TOL:e} (bf16 bound)"
    );
    Ok(())
}

/// The f64 CPU reference forward on bf16-rounded qkv: (z, lse).
fn reference_fwd(qkv_r: &[f64], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
    let mut z = vec![0f64; s.n() * s.d()];
    let mut lse = vec![0f64; s.b * s.h * s.t];
    cpu_attn::forward(&mut z, &mut lse, qkv_r, s);
    (z, lse)
}

/// Runs the GPU forward on a guarded, poisoned z and lse: (z, lse) downloaded.
fn gpu_fwd(
    gpu: &Gpu,
    qkv: &[f32],
    shift: Option<&[f32]>,
    s: AttnShape,
    off: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (nz, nl, nq) = (s.n() * s.d(), s.b * s.h * s.t, s.n() * 3 * s.d());
    let dqkv = upload_guarded(&gpu.be, qkv, off, GUARD)?;
    let dshift = match shift {
        Some(sh) => Some(upload_guarded(&gpu.be, sh, off, GUARD)?),
        None => None,
    };
    let mut z = poisoned(gpu, nz, off)?;
    let mut lse = poisoned(gpu, nl, off)?;
    let shift_view = dshift.as_ref().map(|b| b.slice(off..off + s.d()));
    gpu.k.forward(
        &mut z.slice_mut(off..off + nz),
        &mut lse.slice_mut(off..off + nl),
        &dqkv.slice(off..off + nq),
        s,
        shift_view.as_ref(),
    )?;
    gpu.be.synchronize()?;
    Ok((
        download_guarded(&gpu.be, &z, off, nz, GUARD, "z")?,
        download_guarded(&gpu.be, &lse, off, nl, GUARD, "lse")?,
    ))
}

/// Runs the GPU backward (dz, z, qkv, lse given on the host) into a guarded, poisoned dqkv.
fn gpu_bwd(
    gpu: &Gpu,
    dz: &[f32],
    z: &[f32],
    qkv: &[f32],
    lse: &[f32],
    s: AttnShape,
    off: usize,
) -> Result<Vec<f32>> {
    let (nz, nl, nq) = (s.n() * s.d(), s.b * s.h * s.t, s.n() * 3 * s.d());
    let ddz = upload_guarded(&gpu.be, dz, off, GUARD)?;
    let dzz = upload_guarded(&gpu.be, z, off, GUARD)?;
    let dqkv_in = upload_guarded(&gpu.be, qkv, off, GUARD)?;
    let dlse = upload_guarded(&gpu.be, lse, off, GUARD)?;
    let mut g = poisoned(gpu, nq, off)?;
    gpu.k.backward(
        &mut g.slice_mut(off..off + nq),
        &ddz.slice(off..off + nz),
        &dzz.slice(off..off + nz),
        &dqkv_in.slice(off..off + nq),
        &dlse.slice(off..off + nl),
        s,
    )?;
    gpu.be.synchronize()?;
    download_guarded(&gpu.be, &g, off, nq, GUARD, "dqkv")
}

// ---------------------------------------------------------------------------------------------
// tests

/// z and lse against the f64 reference fed bf16-rounded qkv, every shape.
fn attention_fwd_matches_cpu(gpu: &Gpu) -> Result<()> {
    for (k, &(b, t, h, dh, off)) in SHAPES.iter().enumerate() {
        let s = shape(b, t, h, dh);
        let ctx = format!("fwd B={b} T={t} H={h} dh={dh} offset={off}");
        let inp = inputs(100 + k as u64, s);
        let (rz, rl) = reference_fwd(&to_f64_bf16(&inp.qkv), s);
        let (z, lse) = gpu_fwd(gpu, &inp.qkv, None, s, off).with_context(|| ctx.clone())?;
        check_close(&z, &rz, &format!("{ctx}: z"))?;
        check_close(&lse, &rl, &format!("{ctx}: lse"))?;
    }
    Ok(())
}

/// dq, dk, dv (each third of dqkv on its own) against the f64 reference backward fed the
/// bf16-rounded qkv and dz and the reference's own z and lse; the GPU gets its own forward's z
/// and lse. Where a reference third is (numerically) zero — dq and dk at T = 1, where
/// softmax over one key has no gradient — its GPU values must be below 1e-5·‖dqkv_ref‖ instead.
fn attention_bwd_matches_cpu(gpu: &Gpu) -> Result<()> {
    for (k, &(b, t, h, dh, off)) in SHAPES.iter().enumerate() {
        let s = shape(b, t, h, dh);
        let d = s.d();
        let ctx = format!("bwd B={b} T={t} H={h} dh={dh} offset={off}");
        let inp = inputs(200 + k as u64, s);
        let qkv_r = to_f64_bf16(&inp.qkv);
        let dz_r = to_f64_bf16(&inp.dz);
        let (rz, rl) = reference_fwd(&qkv_r, s);
        let mut rg = vec![0f64; s.n() * 3 * d];
        cpu_attn::backward(&mut rg, &dz_r, &rz, &qkv_r, &rl, s);
        let (z, lse) = gpu_fwd(gpu, &inp.qkv, None, s, off).with_context(|| ctx.clone())?;
        let g = gpu_bwd(gpu, &inp.dz, &z, &inp.qkv, &lse, s, off).with_context(|| ctx.clone())?;
        if let Some(i) = g.iter().position(|x| !x.is_finite()) {
            anyhow::bail!("{ctx}: dqkv element {i} is {} (not finite)", g[i]);
        }
        let total = rg.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (third, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let pick = |i: usize| (i % (3 * d)) / d == third;
            let (e, norm) = rel_err_by(&g, &rg, pick);
            if norm < 1e-6 * total {
                let got = g
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| pick(i))
                    .map(|(_, &x)| (x as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                ensure!(
                    got < 1e-5 * total,
                    "{ctx}: {name}: reference is zero but ‖gpu‖ = {got:.3e} (‖dqkv_ref‖ = {total:.3e})"
                );
            } else {
                ensure!(
                    e < TOL,
                    "{ctx}: {name}: relative error {e:.3e} >= {TOL:e} (bf16 bound)"
                );
            }
        }
    }
    Ok(())
}

/// Two forward and two backward launches on the same inputs give the same bits (no atomics),
/// at the biggest shape and a ragged one.
fn attention_two_launches_bit_identical(gpu: &Gpu) -> Result<()> {
    for (b, t, h, dh) in [(1usize, 1024usize, 16usize, 128usize), (2, 130, 4, 64)] {
        let s = shape(b, t, h, dh);
        let ctx = format!("B={b} T={t} H={h} dh={dh}");
        let inp = inputs(300 + t as u64, s);
        let (z1, l1) = gpu_fwd(gpu, &inp.qkv, None, s, 0)?;
        let (z2, l2) = gpu_fwd(gpu, &inp.qkv, None, s, 0)?;
        let g1 = gpu_bwd(gpu, &inp.dz, &z1, &inp.qkv, &l1, s, 0)?;
        let g2 = gpu_bwd(gpu, &inp.dz, &z1, &inp.qkv, &l1, s, 0)?;
        for (what, a, c) in [("z", &z1, &z2), ("lse", &l1, &l2), ("dqkv", &g1, &g2)] {
            let diff = a
                .iter()
                .zip(c.iter())
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            ensure!(
                diff == 0,
                "{ctx}: {what}: {diff} of {} elements differ between two launches",
                a.len()
            );
        }
    }
    Ok(())
}

/// With a shift, z equals fl(z_unshifted + shift[h·dh + c]) bit for bit on every row (the
/// kernel rounds the add on its own), and lse is unchanged bit for bit.
fn attention_shift_equals_z_plus_shift(gpu: &Gpu) -> Result<()> {
    for &(b, t, h, dh, off) in &[
        (2usize, 7usize, 3usize, 64usize, 1usize),
        (2, 130, 4, 64, 0),
        (1, 257, 2, 128, 0),
    ] {
        let s = shape(b, t, h, dh);
        let d = s.d();
        let ctx = format!("shift B={b} T={t} H={h} dh={dh} offset={off}");
        let inp = inputs(400 + t as u64, s);
        let (z, lse) = gpu_fwd(gpu, &inp.qkv, None, s, off)?;
        let (zs, lses) = gpu_fwd(gpu, &inp.qkv, Some(&inp.shift), s, off)?;
        for (i, (&a, &c)) in z.iter().zip(&zs).enumerate() {
            let want = a + inp.shift[i % d];
            ensure!(
                c.to_bits() == want.to_bits(),
                "{ctx}: z[{i}] = {c} with the shift, expected {a} + {} = {want}",
                inp.shift[i % d]
            );
        }
        ensure!(
            lse.iter()
                .zip(&lses)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{ctx}: lse changed when the shift was given"
        );
    }
    Ok(())
}

/// An unsupported head width and every too-short buffer are errors naming the problem; nothing
/// is launched for them.
fn attention_rejects_bad_dh_and_short_buffers(gpu: &Gpu) -> Result<()> {
    let st = gpu.be.stream();
    let alloc = |n: usize| -> Result<CudaSlice<f32>> {
        st.clone_htod(&vec![0.5f32; n])
            .map_err(|e| anyhow!("upload: {e}"))
    };
    // dh = 48: buffers big enough, the head width itself is refused.
    let bad = shape(1, 8, 2, 48);
    let (nz, nl, nq) = (
        bad.n() * bad.d(),
        bad.b * bad.h * bad.t,
        bad.n() * 3 * bad.d(),
    );
    let (mut z, mut lse, qkv, mut g, dz) =
        (alloc(nz)?, alloc(nl)?, alloc(nq)?, alloc(nq)?, alloc(nz)?);
    let e = gpu
        .k
        .forward(
            &mut z.slice_mut(..),
            &mut lse.slice_mut(..),
            &qkv.slice(..),
            bad,
            None,
        )
        .err()
        .context("forward accepted dh = 48")?;
    ensure!(
        format!("{e:#}").contains("dh = 48"),
        "forward error does not name dh: {e:#}"
    );
    let e = gpu
        .k
        .backward(
            &mut g.slice_mut(..),
            &dz.slice(..),
            &z.slice(..),
            &qkv.slice(..),
            &lse.slice(..),
            bad,
        )
        .err()
        .context("backward accepted dh = 48")?;
    ensure!(
        format!("{e:#}").contains("dh = 48"),
        "backward error does not name dh: {e:#}"
    );

    // dh = 64, each buffer one element short in turn.
    let s = shape(2, 9, 2, 64);
    let (nz, nl, nq, d) = (s.n() * s.d(), s.b * s.h * s.t, s.n() * 3 * s.d(), s.d());
    let (mut z, mut lse, qkv, mut g, dz, sh) = (
        alloc(nz)?,
        alloc(nl)?,
        alloc(nq)?,
        alloc(nq)?,
        alloc(nz)?,
        alloc(d)?,
    );
    let fwd_cases = [
        ("z", 1usize, 0usize, 0usize, 0usize),
        ("lse", 0, 1, 0, 0),
        ("qkv", 0, 0, 1, 0),
        ("shift", 0, 0, 0, 1),
    ];
    for (what, a, b_, c, e_) in fwd_cases {
        let shv = sh.slice(..d - e_);
        let r = gpu.k.forward(
            &mut z.slice_mut(..nz - a),
            &mut lse.slice_mut(..nl - b_),
            &qkv.slice(..nq - c),
            s,
            Some(&shv),
        );
        let e = r
            .err()
            .with_context(|| format!("forward accepted a short {what}"))?;
        ensure!(
            format!("{e:#}").contains(&format!("attention_fwd {what}")),
            "forward error for a short {what} does not name it: {e:#}"
        );
    }
    let bwd_cases = ["dqkv", "dz", "z", "qkv", "lse"];
    for (k, what) in bwd_cases.iter().enumerate() {
        let short = |i: usize| usize::from(i == k);
        let r = gpu.k.backward(
            &mut g.slice_mut(..nq - short(0)),
            &dz.slice(..nz - short(1)),
            &z.slice(..nz - short(2)),
            &qkv.slice(..nq - short(3)),
            &lse.slice(..nl - short(4)),
            s,
        );
        let e = r
            .err()
            .with_context(|| format!("backward accepted a short {what}"))?;
        ensure!(
            format!("{e:#}").contains(&format!("attention_bwd {what} ")),
            "backward error for a short {what} does not name it: {e:#}"
        );
    }
    Ok(())
}
