//! Index ranges past 32 bits on the GPU: the tied output head of OLMo-124M trained at 64
//! sequences of 1,024 tokens (N = 65,536 rows, D = 768, V = 50,304), run through the CUDA
//! executor exactly as the training step runs it: `logits = x·Eᵀ` (stored in bf16), the fused
//! cross-entropy over the logits (gradient in place, bf16), `dx = dlogits·E`, `dE (+)= dlogitsᵀ·x`.
//!
//! The logits hold N·V = 3.3e9 elements (6.6 GB in bf16): rows from 42,691 on start past element
//! 2^31, where a signed 32-bit element index overflows, and past byte 2^32, where a 32-bit byte
//! offset wraps; so a row offset, leading-dimension product or grid index computed that way
//! inside a kernel (matmul epilogue and operand loads, cross-entropy row pointer, the bwd_w
//! reduction over all 65,536 rows) lands on the wrong row and shows here.
//!
//! x is zero except a few sampled rows, so the CPU references stay cheap: each checked row of
//! the logits, of their gradient and of dx is recomputed on the host from the GPU's own inputs to
//! that op (bf16-rounded operands as the tensor cores see them, f64 sums), and dE, whose every
//! element sums over all N rows, has only the sampled rows' terms (zero rows add exact zeros).
//! Tolerances (norm-wise per row or tensor): logits and dlogits one bf16 rounding
//! (`BF16_STORE_TOL`, 2^-8), losses 1e-5 (fp32 math on the stored bf16 logits), dx 1e-3
//! (50,304-term fp32 sums with cancellation), dE 1e-5 (a few terms), and the accumulating dE must
//! be exactly twice the overwriting one (old + Σ with old = Σ is exact).
//!
//! Needs about 7 GB of device memory and a few seconds (mostly the host references); named to
//! run after the other harnesses, which share one time budget on the GPU machine. Without a
//! usable GPU every test is reported as *ignored*; with `BADDATA_GPU_REQUIRED=1` a missing GPU
//! fails the run instead.

use anyhow::{ensure, Context, Result};
use baddata::backend::cuda::executor::CudaExecutor;
use baddata::backend::{Backend, Span, SpanMut};
use cudarc::driver::{CudaSlice, DeviceRepr};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "common/gpu.rs"]
mod gpu_common;

use gpu_common::{
    check_bf16_close, exec, open_ctx, rel_err64, run_gpu_tests, upload_f32, Ctx, GpuTest,
};

fn main() {
    let tests: [(&str, GpuTest<Ctx>); 1] = [(
        "olmo_124m_head_at_65536_rows_matches_cpu",
        olmo_124m_head_at_65536_rows,
    )];
    run_gpu_tests("gpu wide-index", open_ctx, Vec::new(), &tests)
}

/// The value the tensor cores multiply: `x` rounded to bf16 (nearest, ties to even).
fn b(x: f32) -> f64 {
    bf16::from_f32(x).to_f64()
}

/// Every element of `v` rounded to bf16 (exact in f32).
fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&a| bf16::from_f32(a).to_f32()).collect()
}

/// Row `r` (`width` elements) of a row-major device buffer, copied to the host.
fn row<T: DeviceRepr + Default + Clone>(
    be: &CudaExecutor,
    buf: &CudaSlice<T>,
    r: usize,
    width: usize,
) -> Result<Vec<T>> {
    be.gpu()
        .stream()
        .clone_dtoh(&buf.slice(r * width..(r + 1) * width))
        .with_context(|| format!("reading row {r} back"))
}

/// Row `r` of the bf16 logits (or their gradient), widened to f32 (exact).
fn logit_row(be: &CudaExecutor, buf: &CudaSlice<bf16>, r: usize, v: usize) -> Result<Vec<f32>> {
    Ok(row(be, buf, r, v)?.into_iter().map(f32::from).collect())
}

fn olmo_124m_head_at_65536_rows(ctx: &Ctx) -> Result<()> {
    let (n, d, v) = (65_536usize, 768usize, 50_304usize);
    assert!(n * v > u32::MAX as usize / 2 && 2 * n * v > u32::MAX as usize);
    let be = exec(ctx)?;
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    // Rows with non-zero x (the first, both sides of element 2^31 = row 42,690.6, the last) and
    // zero rows past byte 2^32 whose logits are exactly 0.
    let live = [0usize, 1, 21_345, 42_690, 42_691, 60_001, 65_534, 65_535];
    let dead = [21_346usize, 50_000, 65_533];
    let mut x = vec![0.0f32; n * d];
    for &r in &live {
        for c in 0..d {
            x[r * d + c] = rng.random_range(-1.0f32..1.0);
        }
    }
    let w: Vec<f32> = (0..v * d).map(|_| rng.random_range(-0.1f32..0.1)).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let (xb, wb) = (rounded(&x), rounded(&w));

    let up = |x: &[f32]| upload_f32(&be, x);
    let (gx, gw) = (up(&x)?, up(&w)?);
    let mut ids = be.alloc_ids(n)?;
    be.upload_ids(&targets, &mut ids)?;
    let mut logits = be.alloc_logits(n * v)?;
    // The first rows must be overwritten too.
    be.gpu()
        .stream()
        .memcpy_htod(&[bf16::NAN; 4096], &mut logits.slice_mut(0..4096))
        .context("poisoning the logits")?;
    let mut losses = be.alloc(n)?;

    // Forward: logits = x · Eᵀ, rounded to bf16.
    be.logits_fwd(&mut logits, &gx, Span::new(&gw, 0, v * d), n, d, v)?;
    let mut rows_logits = Vec::new();
    for &r in live.iter().chain(&dead) {
        let got_b: Vec<bf16> = row(&be, &logits, r, v)?;
        let got: Vec<f32> = got_b.iter().map(|&y| y.to_f32()).collect();
        if dead.contains(&r) {
            ensure!(
                got.iter().all(|&y| y == 0.0),
                "logits row {r} (x = 0) is not all zero"
            );
        } else {
            let want: Vec<f64> = (0..v)
                .map(|j| {
                    (0..d)
                        .map(|c| xb[r * d + c] as f64 * wb[j * d + c] as f64)
                        .sum()
                })
                .collect();
            check_bf16_close(&format!("logits row {r}"), "logits", &got_b, &want)?;
        }
        rows_logits.push((r, got));
    }

    // Cross-entropy with the gradient of the mean loss written over the logits.
    let scale = 1.0 / n as f64;
    be.cross_entropy(&mut logits, &mut losses, &ids, n, v, Some(scale))?;
    let all_losses = be.download(&losses)?;
    let mut rows_dl = Vec::new();
    for (r, lg) in &rows_logits {
        let m = lg.iter().fold(f64::NEG_INFINITY, |a, &y| a.max(y as f64));
        let s: f64 = lg.iter().map(|&y| (y as f64 - m).exp()).sum();
        let t = targets[*r] as usize;
        let want_loss = m + s.ln() - lg[t] as f64;
        let e = ((all_losses[*r] as f64 - want_loss) / want_loss).abs();
        ensure!(
            e < 1e-5,
            "loss of row {r}: gpu {} vs {want_loss} (rel {e:.2e})",
            all_losses[*r]
        );
        let want: Vec<f64> = lg
            .iter()
            .enumerate()
            .map(|(j, &y)| scale * ((y as f64 - m).exp() / s - (j == t) as u8 as f64))
            .collect();
        let got_b: Vec<bf16> = row(&be, &logits, *r, v)?;
        check_bf16_close(&format!("dlogits row {r}"), "dlogits", &got_b, &want)?;
        rows_dl.push((*r, logit_row(&be, &logits, *r, v)?));
    }
    let ln_v = (v as f64).ln();
    for (r, &l) in all_losses.iter().enumerate() {
        if !live.contains(&r) {
            ensure!(
                ((l as f64 - ln_v) / ln_v).abs() < 1e-6,
                "loss of zero row {r}: {l}, expected ln V = {ln_v}"
            );
        }
    }

    // dx = dlogits · E and dE = dlogitsᵀ · x (overwrite), then again accumulating into dE.
    let mut dx = up(&vec![f32::NAN; n * d])?;
    let mut dw = up(&vec![f32::NAN; v * d])?;
    let head_bwd = |dx: &mut CudaSlice<f32>, dw: &mut CudaSlice<f32>, accumulate| {
        let dwte = SpanMut::new(dw, 0, v * d);
        be.logits_bwd(
            dx,
            dwte,
            &logits,
            &gx,
            Span::new(&gw, 0, v * d),
            n,
            d,
            v,
            accumulate,
        )
    };
    head_bwd(&mut dx, &mut dw, false)?;
    for (r, dl) in &rows_dl {
        let mut want = vec![0.0f64; d];
        for (j, &g) in dl.iter().enumerate() {
            let g = b(g);
            for (c, acc) in want.iter_mut().enumerate() {
                *acc += g * wb[j * d + c] as f64;
            }
        }
        let e = rel_err64(&row(&be, &dx, *r, d)?, &want);
        ensure!(e < 1e-3, "dx row {r}: rel err {e:.2e} ≥ 1e-3");
    }
    let got = be.download(&dw)?;
    let mut want = vec![0.0f64; v * d];
    for (r, dl) in rows_dl.iter().filter(|(r, _)| live.contains(r)) {
        for (j, &g) in dl.iter().enumerate() {
            let g = b(g);
            for c in 0..d {
                want[j * d + c] += g * xb[r * d + c] as f64;
            }
        }
    }
    let e = rel_err64(&got, &want);
    ensure!(e < 1e-5, "dE: rel err {e:.2e} ≥ 1e-5");
    head_bwd(&mut dx, &mut dw, true)?;
    let twice = be.download(&dw)?;
    let bad = got
        .iter()
        .zip(&twice)
        .filter(|(&a, &t)| (2.0 * a).to_bits() != t.to_bits())
        .count();
    ensure!(
        bad == 0,
        "accumulating dE is not exactly twice the overwriting one at {bad} elements"
    );
    Ok(())
}
