//! Op-by-op checks of the CPU executor.
//!
//! Backward passes are compared with central finite differences in f64: for a scalar
//! `L(x) = Σ w ⊙ op(x)` with a fixed random `w`, the analytic directional derivative `g·u`
//! (from the op's backward fed `dy = w`) against `(L(x + h·u) − L(x − h·u)) / 2h` with step
//! `h = 1e-5`, over random directions `u` and sampled coordinate vectors; the vectors of both
//! must agree norm-wise, `‖fd − g‖ / ‖g‖ < 1e-6` (truncation error O(h²) ≈ 1e-10, rounding
//! ≈ 1e-16·|L|/h ≈ 1e-11). Shapes are ragged (not powers of two). Forwards are compared with
//! direct implementations of the formulas (naive GEMM loop, materialised softmax, HF's RoPE).

// Reference implementations index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

use baddata::backend::cpu::Cpu;
use baddata::backend::{AttnShape, Backend, Pointwise, Span, SpanMut, Tensor, TensorMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Finite-difference step.
const H: f64 = 1e-5;
/// Norm-wise tolerance on ‖fd − g‖/‖g‖.
const TOL: f64 = 1e-6;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn randv(r: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| scale * (2.0 * r.random::<f64>() - 1.0))
        .collect()
}

fn dotv(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dotv(a, a).sqrt()
}

/// Compares the analytic gradient `g` of `f` at `x` with central differences along 6 random
/// directions and 12 sampled coordinates; panics with the relative error when above `TOL`.
fn gradcheck(name: &str, x: &[f64], g: &[f64], f: impl Fn(&[f64]) -> f64, seed: u64) {
    assert_eq!(x.len(), g.len(), "{name}: gradient length");
    let mut r = rng(seed);
    let mut dirs: Vec<Vec<f64>> = (0..6).map(|_| randv(&mut r, x.len(), 1.0)).collect();
    for _ in 0..12 {
        let mut e = vec![0.0; x.len()];
        e[r.random_range(0..x.len())] = 1.0;
        dirs.push(e);
    }
    let (mut fd, mut an) = (Vec::new(), Vec::new());
    for u in &dirs {
        let xp: Vec<f64> = x.iter().zip(u).map(|(a, b)| a + H * b).collect();
        let xm: Vec<f64> = x.iter().zip(u).map(|(a, b)| a - H * b).collect();
        fd.push((f(&xp) - f(&xm)) / (2.0 * H));
        an.push(dotv(g, u));
    }
    let diff: Vec<f64> = fd.iter().zip(&an).map(|(a, b)| a - b).collect();
    let rel = norm(&diff) / norm(&an);
    assert!(norm(&an) > 0.0, "{name}: zero gradient, check is vacuous");
    assert!(
        rel < TOL,
        "{name}: ‖fd − g‖/‖g‖ = {rel:e} (fd {fd:?}, analytic {an:?})"
    );
}

fn cpu() -> Cpu<f64> {
    Cpu::new()
}

// ---------- matmul ----------

fn naive_matmul(x: &[f64], w: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                y[i * n + j] += x[i * k + p] * w[j * k + p];
            }
        }
    }
    y
}

#[test]
fn matmul_matches_naive_loop_f64_and_f32() {
    let be = cpu();
    let mut r = rng(1);
    for &(m, k, n) in &[(37, 29, 53), (1, 7, 3), (130, 67, 75)] {
        let x = randv(&mut r, m * k, 1.0);
        let w = randv(&mut r, n * k, 1.0);
        let dy = randv(&mut r, m * n, 1.0);
        let mut y = vec![f64::NAN; m * n];
        be.matmul_fwd(&mut y, &x, Span::new(&w, 0, n * k), m, k, n)
            .unwrap();
        let yr = naive_matmul(&x, &w, m, k, n);
        let err = y
            .iter()
            .zip(&yr)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "fwd {m}x{k}x{n}: {err}");
        // dx = dy·W
        let mut dx = vec![f64::NAN; m * k];
        be.matmul_bwd_x(&mut dx, &dy, Span::new(&w, 0, n * k), m, k, n)
            .unwrap();
        for i in 0..m {
            for p in 0..k {
                let e: f64 = (0..n).map(|j| dy[i * n + j] * w[j * k + p]).sum();
                approx::assert_abs_diff_eq!(dx[i * k + p], e, epsilon = 1e-12);
            }
        }
        // dW = dyᵀ·x, then accumulate once more: 2·dyᵀ·x; at an offset inside a larger buffer.
        let off = 5;
        let mut dwbuf = vec![7.0; n * k + 2 * off];
        for acc in [false, true] {
            be.matmul_bwd_w(SpanMut::new(&mut dwbuf, off, n * k), &dy, &x, m, k, n, acc)
                .unwrap();
        }
        assert!(dwbuf[..off]
            .iter()
            .chain(&dwbuf[off + n * k..])
            .all(|&v| v == 7.0));
        for j in 0..n {
            for p in 0..k {
                let e: f64 = (0..m).map(|i| dy[i * n + j] * x[i * k + p]).sum();
                approx::assert_abs_diff_eq!(dwbuf[off + j * k + p], 2.0 * e, epsilon = 1e-11);
            }
        }
        // f32 forward against the f64 reference.
        let be32 = Cpu::<f32>::new();
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let mut y32 = vec![f32::NAN; m * n];
        be32.matmul_fwd(&mut y32, &x32, Span::new(&w32, 0, n * k), m, k, n)
            .unwrap();
        let err = y32
            .iter()
            .zip(&yr)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-4 * k as f64, "f32 fwd {m}x{k}x{n}: {err}");
    }
}

/// The GEMM's result must not depend on how many threads computed it: the same f32 products
/// (large enough to be split among threads) from outside rayon (GEMM threaded on the global
/// pool) and from inside a one-thread rayon pool (single-threaded GEMM) agree bit for bit.
#[test]
fn matmul_is_bit_identical_whatever_the_threads() {
    let (m, k, n) = (300, 257, 190);
    let mut r = rng(7);
    let x: Vec<f32> = randv(&mut r, m * k, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let w: Vec<f32> = randv(&mut r, n * k, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let dy: Vec<f32> = randv(&mut r, m * n, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let run = || {
        let be = Cpu::<f32>::new();
        let mut y = vec![0.0f32; m * n];
        let mut dx = vec![0.0f32; m * k];
        let mut dw = vec![0.0f32; n * k];
        be.matmul_fwd(&mut y, &x, Span::new(&w, 0, n * k), m, k, n)
            .unwrap();
        be.matmul_bwd_x(&mut dx, &dy, Span::new(&w, 0, n * k), m, k, n)
            .unwrap();
        be.matmul_bwd_w(SpanMut::new(&mut dw, 0, n * k), &dy, &x, m, k, n, false)
            .unwrap();
        [y, dx, dw].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
    };
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
    let outside = run();
    for (name, i) in [("forward", 0), ("backward_x", 1), ("backward_w", 2)] {
        assert!(
            outside[i] == single[i],
            "{name}: threaded and single-threaded differ"
        );
    }
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let be = cpu();
    let mut r = rng(2);
    let (m, k, n) = (11, 13, 9);
    let x = randv(&mut r, m * k, 1.0);
    let w = randv(&mut r, n * k, 1.0);
    let wy = randv(&mut r, m * n, 1.0);
    let loss = |x: &[f64], w: &[f64]| {
        let mut y = vec![0.0; m * n];
        be.matmul_fwd(
            &mut y,
            &x.to_vec(),
            Span::new(&w.to_vec(), 0, n * k),
            m,
            k,
            n,
        )
        .unwrap();
        dotv(&y, &wy)
    };
    let mut dx = vec![0.0; m * k];
    be.matmul_bwd_x(&mut dx, &wy, Span::new(&w, 0, n * k), m, k, n)
        .unwrap();
    let mut dw = vec![0.0; n * k];
    be.matmul_bwd_w(SpanMut::new(&mut dw, 0, n * k), &wy, &x, m, k, n, false)
        .unwrap();
    gradcheck("matmul dx", &x, &dx, |x| loss(x, &w), 3);
    gradcheck("matmul dW", &w, &dw, |w| loss(&x, w), 4);
}

// ---------- layernorm ----------

#[test]
fn layernorm_forward_and_backward() {
    let be = cpu();
    let mut r = rng(5);
    let (n, d) = (7, 19);
    let eps = 1e-5;
    let x: Vec<f64> = randv(&mut r, n * d, 2.0).iter().map(|v| v + 0.3).collect();
    let wy = randv(&mut r, n * d, 1.0);
    let fwd = |x: &[f64]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * d], vec![0.0; n], vec![0.0; n]);
        be.layernorm_fwd(&mut out, &mut mean, &mut rstd, &x.to_vec(), n, d, eps)
            .unwrap();
        (out, mean, rstd)
    };
    let (out, mean, rstd) = fwd(&x);
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d as f64;
        approx::assert_abs_diff_eq!(mean[i], mu, epsilon = 1e-14);
        approx::assert_abs_diff_eq!(rstd[i], 1.0 / (var + eps).sqrt(), epsilon = 1e-12);
        for j in 0..d {
            let e = (row[j] - mu) / (var + eps).sqrt();
            approx::assert_abs_diff_eq!(out[i * d + j], e, epsilon = 1e-12);
        }
    }
    let mut dx = vec![f64::NAN; n * d];
    be.layernorm_bwd(&mut dx, &wy, &out, &rstd, n, d, false)
        .unwrap();
    gradcheck("layernorm dx", &x, &dx, |x| dotv(&fwd(x).0, &wy), 6);
    // accumulate: dx + dx
    let mut acc = dx.clone();
    be.layernorm_bwd(&mut acc, &wy, &out, &rstd, n, d, true)
        .unwrap();
    for (a, b) in acc.iter().zip(&dx) {
        approx::assert_abs_diff_eq!(*a, 2.0 * b, epsilon = 1e-14);
    }
}

// ---------- rope ----------

/// HF's `apply_rotary_pos_emb` written out: `inv_freq[i] = θ^(−2i/dh)`, `emb = cat(freqs,
/// freqs)`, `out = x·cos(emb) + rotate_half(x)·sin(emb)`, `rotate_half(x) = cat(−x2, x1)`.
fn hf_rope(x: &[f64], pos: usize, theta: f64) -> Vec<f64> {
    let dh = x.len();
    let half = dh / 2;
    let mut out = vec![0.0; dh];
    for c in 0..dh {
        let i = c % half;
        let ang = pos as f64 * theta.powf(-((2 * i) as f64) / dh as f64);
        let rot = if c < half { -x[c + half] } else { x[c - half] };
        out[c] = x[c] * ang.cos() + rot * ang.sin();
    }
    out
}

#[test]
fn rope_matches_hf_formula_and_its_backward() {
    let be = cpu();
    let mut r = rng(7);
    let s = AttnShape {
        b: 2,
        t: 5,
        h: 3,
        dh: 6,
    };
    let (d, n) = (s.d(), s.n());
    let theta = 10_000.0;
    let table = baddata::model::transformer::rope_table(s.t, s.dh, theta);
    let qkv = randv(&mut r, n * 3 * d, 1.0);
    let mut out = qkv.clone();
    be.pointwise(Pointwise::Rope {
        qkv: TensorMut::new(&mut out, [s.b, s.t, 3 * s.d()]),
        table: Tensor::new(&table, [s.t, s.dh]),
        s,
        transpose: false,
    })
    .unwrap();
    for row in 0..n {
        let pos = row % s.t;
        for part in 0..3 {
            for h in 0..s.h {
                let o = row * 3 * d + part * d + h * s.dh;
                let x = &qkv[o..o + s.dh];
                let e = if part < 2 {
                    hf_rope(x, pos, theta)
                } else {
                    x.to_vec()
                };
                for c in 0..s.dh {
                    assert!(
                        (out[o + c] - e[c]).abs() < 1e-12,
                        "row {row} part {part} head {h}"
                    );
                }
            }
        }
    }
    let wy = randv(&mut r, n * 3 * d, 1.0);
    let mut g = wy.clone();
    be.pointwise(Pointwise::Rope {
        qkv: TensorMut::new(&mut g, [s.b, s.t, 3 * s.d()]),
        table: Tensor::new(&table, [s.t, s.dh]),
        s,
        transpose: true,
    })
    .unwrap();
    gradcheck(
        "rope",
        &qkv,
        &g,
        |x| {
            let mut y = x.to_vec();
            be.pointwise(Pointwise::Rope {
                qkv: TensorMut::new(&mut y, [s.b, s.t, 3 * s.d()]),
                table: Tensor::new(&table, [s.t, s.dh]),
                s,
                transpose: false,
            })
            .unwrap();
            dotv(&y, &wy)
        },
        8,
    );
}

// ---------- attention ----------

/// Materialised causal softmax attention for one (batch, head).
fn naive_attention(qkv: &[f64], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
    let d = s.d();
    let mut z = vec![0.0; s.n() * d];
    let mut lse = vec![0.0; s.n() * s.h];
    for b in 0..s.b {
        for h in 0..s.h {
            let get = |t: usize, part: usize, c: usize| {
                qkv[(b * s.t + t) * 3 * d + part * d + h * s.dh + c]
            };
            for i in 0..s.t {
                let mut sc = vec![f64::NEG_INFINITY; s.t];
                for (j, v) in sc.iter_mut().enumerate().take(i + 1) {
                    *v = (0..s.dh).map(|c| get(i, 0, c) * get(j, 1, c)).sum::<f64>()
                        / (s.dh as f64).sqrt();
                }
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                lse[(b * s.h + h) * s.t + i] = mx + sum.ln();
                for c in 0..s.dh {
                    z[(b * s.t + i) * d + h * s.dh + c] =
                        (0..s.t).map(|j| e[j] / sum * get(j, 2, c)).sum();
                }
            }
        }
    }
    (z, lse)
}

#[test]
fn attention_forward_matches_materialised_softmax() {
    let be = cpu();
    let mut r = rng(9);
    for s in [
        AttnShape {
            b: 2,
            t: 13,
            h: 3,
            dh: 10,
        },
        AttnShape {
            b: 1,
            t: 1,
            h: 2,
            dh: 4,
        },
        AttnShape {
            b: 3,
            t: 21,
            h: 1,
            dh: 18,
        },
        // T = 70 spans three query blocks of the CPU kernel (blocks of 32 rows).
        AttnShape {
            b: 1,
            t: 70,
            h: 2,
            dh: 6,
        },
    ] {
        let qkv = randv(&mut r, s.n() * 3 * s.d(), 1.5);
        let (mut z, mut lse) = (vec![f64::NAN; s.n() * s.d()], vec![f64::NAN; s.n() * s.h]);
        be.attention_fwd(&mut z, &mut lse, &qkv, s, None).unwrap();
        let (zr, lr) = naive_attention(&qkv, s);
        for (a, b) in z.iter().zip(&zr).chain(lse.iter().zip(&lr)) {
            assert!(
                approx::abs_diff_eq!(a, b, epsilon = 1e-12),
                "{s:?}: {a} vs {b}"
            );
        }
        let be32 = Cpu::<f32>::new();
        let q32: Vec<f32> = qkv.iter().map(|&v| v as f32).collect();
        let (mut z32, mut l32) = (vec![f32::NAN; s.n() * s.d()], vec![f32::NAN; s.n() * s.h]);
        be32.attention_fwd(&mut z32, &mut l32, &q32, s, None)
            .unwrap();
        for (a, b) in z32.iter().zip(&zr) {
            assert!(
                approx::abs_diff_eq!(*a as f64, b, epsilon = 1e-5),
                "{s:?} f32: {a} vs {b}"
            );
        }
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    let be = cpu();
    let mut r = rng(10);
    // T = 45 spans two query blocks of the CPU kernel.
    for (b, t, h, dh) in [(2, 9, 3, 6), (1, 45, 2, 4)] {
        attention_backward_case(&be, &mut r, AttnShape { b, t, h, dh });
    }
}

fn attention_backward_case(be: &Cpu<f64>, r: &mut ChaCha8Rng, s: AttnShape) {
    let qkv = randv(r, s.n() * 3 * s.d(), 1.0);
    let wz = randv(r, s.n() * s.d(), 1.0);
    let fwd = |x: &[f64]| {
        let (mut z, mut lse) = (vec![0.0; s.n() * s.d()], vec![0.0; s.n() * s.h]);
        be.attention_fwd(&mut z, &mut lse, &x.to_vec(), s, None)
            .unwrap();
        (z, lse)
    };
    let (z, lse) = fwd(&qkv);
    let mut g = vec![f64::NAN; qkv.len()];
    be.attention_bwd(&mut g, &wz, &z, &qkv, &lse, s).unwrap();
    gradcheck("attention dqkv", &qkv, &g, |x| dotv(&fwd(x).0, &wz), 11);
    // The q, k and v thirds separately (each must carry gradient).
    let d = s.d();
    for (part, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let mask = |i: usize| (i % (3 * d)) / d == part;
        let gp: Vec<f64> = g
            .iter()
            .enumerate()
            .map(|(i, &v)| if mask(i) { v } else { 0.0 })
            .collect();
        // Derivative along directions inside this third only.
        let mut rr = rng(12 + part as u64);
        let mut fd = Vec::new();
        let mut an = Vec::new();
        for _ in 0..6 {
            let u: Vec<f64> = (0..qkv.len())
                .map(|i| {
                    if mask(i) {
                        2.0 * rr.random::<f64>() - 1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let xp: Vec<f64> = qkv.iter().zip(&u).map(|(a, b)| a + H * b).collect();
            let xm: Vec<f64> = qkv.iter().zip(&u).map(|(a, b)| a - H * b).collect();
            fd.push((dotv(&fwd(&xp).0, &wz) - dotv(&fwd(&xm).0, &wz)) / (2.0 * H));
            an.push(dotv(&gp, &u));
        }
        let diff: Vec<f64> = fd.iter().zip(&an).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(&an);
        assert!(rel < TOL, "attention {name}: {rel:e}");
    }
}

// ---------- swiglu ----------

#[test]
fn swiglu_forward_and_backward() {
    let be = cpu();
    let mut r = rng(13);
    let (n, f) = (5, 11);
    let gu = randv(&mut r, n * 2 * f, 3.0);
    let wh = randv(&mut r, n * f, 1.0);
    let fwd = |x: &[f64]| {
        let mut h = vec![0.0; n * f];
        be.pointwise(Pointwise::SwigluFwd {
            h: TensorMut::new(&mut h, [n, f]),
            gu: Tensor::new(&x.to_vec(), [n, 2 * f]),
        })
        .unwrap();
        h
    };
    let h = fwd(&gu);
    for i in 0..n {
        for j in 0..f {
            let (g, u) = (gu[i * 2 * f + j], gu[i * 2 * f + f + j]);
            let e = g / (1.0 + (-g).exp()) * u;
            approx::assert_abs_diff_eq!(h[i * f + j], e, epsilon = 1e-14);
        }
    }
    let mut dgu = vec![f64::NAN; n * 2 * f];
    be.pointwise(Pointwise::SwigluBwd {
        dgu: TensorMut::new(&mut dgu, [n, 2 * f]),
        dh: Tensor::new(&wh, [n, f]),
        gu: Tensor::new(&gu, [n, 2 * f]),
    })
    .unwrap();
    gradcheck("swiglu", &gu, &dgu, |x| dotv(&fwd(x), &wh), 14);
}

// ---------- cross-entropy ----------

#[test]
fn cross_entropy_loss_and_gradient() {
    let be = cpu();
    let mut r = rng(15);
    let (n, v) = (6, 23);
    let logits = randv(&mut r, n * v, 4.0);
    let targets: Vec<u32> = (0..n).map(|_| r.random_range(0..v as u32)).collect();
    let scale = 1.0 / n as f64;
    let mean_loss = |x: &[f64]| {
        let mut l = x.to_vec();
        let mut losses = vec![0.0; n];
        be.cross_entropy(&mut l, &mut losses, &targets, n, v, None)
            .unwrap();
        assert_eq!(
            l, x,
            "forward-only cross-entropy must leave the logits alone"
        );
        losses.iter().sum::<f64>() * scale
    };
    let mut losses = vec![f64::NAN; n];
    let mut g = logits.clone();
    be.cross_entropy(&mut g, &mut losses, &targets, n, v, Some(scale))
        .unwrap();
    for i in 0..n {
        let row = &logits[i * v..(i + 1) * v];
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        approx::assert_abs_diff_eq!(losses[i], (lse - row[targets[i] as usize]), epsilon = 1e-12);
    }
    gradcheck("cross_entropy", &logits, &g, mean_loss, 16);
    let mut bad = logits.clone();
    let err = be.cross_entropy(&mut bad, &mut losses, &vec![v as u32; n], n, v, None);
    assert!(err.is_err());
}

// ---------- embedding, residual, row add ----------

#[test]
fn embedding_forward_and_backward() {
    let be = cpu();
    let mut r = rng(17);
    let (vocab, d, n) = (9, 7, 12);
    let wte = randv(&mut r, vocab * d, 1.0);
    let ids: Vec<u32> = (0..n).map(|i| [3, 3, 0, 8, 5][i % 5]).collect();
    let wy = randv(&mut r, n * d, 1.0);
    let fwd = |w: &[f64]| {
        let mut out = vec![0.0; n * d];
        be.embedding_fwd(&mut out, &ids, Span::new(&w.to_vec(), 0, vocab * d), n, d)
            .unwrap();
        out
    };
    let out = fwd(&wte);
    for i in 0..n {
        let id = ids[i] as usize;
        assert_eq!(&out[i * d..(i + 1) * d], &wte[id * d..(id + 1) * d]);
    }
    // Backward accumulates into whatever is there: start from a known non-zero value.
    let mut g = vec![0.5; vocab * d];
    be.embedding_bwd(SpanMut::new(&mut g, 0, vocab * d), &ids, &wy, n, d)
        .unwrap();
    let g: Vec<f64> = g.iter().map(|v| v - 0.5).collect();
    gradcheck("embedding", &wte, &g, |w| dotv(&fwd(w), &wy), 18);
    let mut out = vec![0.0; n * d];
    let bad: Vec<u32> = vec![vocab as u32; n];
    assert!(be
        .embedding_fwd(&mut out, &bad, Span::new(&wte, 0, vocab * d), n, d)
        .is_err());
}

#[test]
fn add_and_add_rows() {
    let be = cpu();
    let mut r = rng(19);
    let (n, d) = (5, 13);
    let a = randv(&mut r, n * d, 1.0);
    let b = randv(&mut r, n * d, 1.0);
    let mut out = vec![f64::NAN; n * d];
    be.pointwise(Pointwise::Add {
        out: TensorMut::new(&mut out, [n * d]),
        a: Tensor::new(&a, [n * d]),
        b: Tensor::new(&b, [n * d]),
    })
    .unwrap();
    for i in 0..n * d {
        assert_eq!(out[i], a[i] + b[i]);
    }
    let v = randv(&mut r, d + 4, 1.0);
    let mut x = a.clone();
    be.pointwise(Pointwise::AddRows {
        x: TensorMut::new(&mut x, [n, d]),
        v: Tensor::at(&v, 4, [d]),
    })
    .unwrap();
    for i in 0..n {
        for j in 0..d {
            assert_eq!(x[i * d + j], a[i * d + j] + v[4 + j]);
        }
    }
}

/// clip_qkv's clamp: the forward against `f64::clamp` (NaN kept), the backward's mask exactly
/// (the gradient passes at ±c, as PyTorch's clamp_backward; stops outside and at NaN), and
/// against central differences of `Σ w ⊙ clamp(x)` at inputs kept 1e-3 away from ±c (the kink;
/// the steps move them by 1e-5). `zero_range` clears exactly its range.
#[test]
fn clamp_forward_backward_and_zero_range() {
    let be = cpu();
    let mut r = rng(23);
    let c = 0.75;
    let n = 1003;
    let mut x = randv(&mut r, n, 2.0);
    for v in x.iter_mut() {
        if (v.abs() - c).abs() < 1e-3 {
            *v += 3e-3f64.copysign(*v);
        }
    }
    // exact edge cases, after the random ones
    let edges = [c, -c, f64::NAN, 0.0, 1e9, -1e9];
    x.extend(edges);
    let n = x.len();
    let mut y = x.clone();
    be.pointwise(Pointwise::Clamp {
        x: TensorMut::new(&mut y, [n]),
        c,
    })
    .unwrap();
    for (a, b) in x.iter().zip(&y) {
        if a.is_nan() {
            assert!(b.is_nan());
        } else {
            assert_eq!(*b, a.clamp(-c, c), "clamp({a})");
        }
    }
    let clipped = x.iter().filter(|v| v.abs() > c).count();
    assert!(
        clipped > n / 5 && clipped < n * 4 / 5,
        "{clipped} of {n} clipped"
    );
    let w = randv(&mut r, n, 1.0);
    let mut g = w.clone();
    be.pointwise(Pointwise::ClampBwd {
        dx: TensorMut::new(&mut g, [n]),
        x: Tensor::new(&x, [n]),
        c,
    })
    .unwrap();
    for i in 0..n {
        let pass = x[i] >= -c && x[i] <= c;
        assert_eq!(g[i], if pass { w[i] } else { 0.0 }, "x = {}", x[i]);
    }
    let k = n - edges.len();
    let f = |xs: &[f64]| {
        let mut y = xs.to_vec();
        let k = xs.len();
        be.pointwise(Pointwise::Clamp {
            x: TensorMut::new(&mut y, [k]),
            c,
        })
        .unwrap();
        dotv(&y, &w[..k])
    };
    gradcheck("clamp", &x[..k], &g[..k], f, 24);
    // a shorter count leaves the rest alone
    let mut y = x.clone();
    be.pointwise(Pointwise::Clamp {
        x: TensorMut::new(&mut y, [10]),
        c,
    })
    .unwrap();
    assert_eq!(y[10..].iter().filter(|v| v.is_nan()).count(), 1);
    assert!(y[10..k].iter().zip(&x[10..k]).all(|(a, b)| a == b));

    let mut z = vec![1.0; 20];
    be.zero_range(SpanMut::new(&mut z, 5, 7)).unwrap();
    assert!(z[..5].iter().chain(&z[12..]).all(|&v| v == 1.0));
    assert!(z[5..12].iter().all(|&v| v == 0.0));
    assert!(be.zero_range(SpanMut::new(&mut z, 15, 7)).is_err());
    assert!(be
        .pointwise(Pointwise::Clamp {
            x: TensorMut::new(&mut vec![0.0; 3], [4]),
            c,
        })
        .is_err());
}

#[test]
fn short_buffers_are_errors() {
    let be = cpu();
    let x = vec![0.0; 10];
    let mut y = vec![0.0; 3];
    assert!(be
        .matmul_fwd(&mut y, &x, Span::new(&x, 0, 10), 2, 5, 2)
        .is_err());
    let w = vec![0.0; 10];
    assert!(be
        .matmul_fwd(&mut vec![0.0; 4], &x, Span::new(&w, 5, 10), 2, 5, 2)
        .is_err());
}

// ---------- optimizer ----------

#[test]
fn adamw_and_norm_match_the_reference_bit_for_bit() {
    use baddata::optim::adamw::{adamw_reference, global_norm, AdamWConfig};
    let be = Cpu::<f32>::new();
    let mut r = rng(21);
    // Longer than one rayon chunk (16384) and one norm chunk (4096), not a multiple of either.
    let n = 40_000 + 37;
    let mk = |r: &mut ChaCha8Rng, s: f64| -> Vec<f32> {
        randv(r, n, s).iter().map(|&x| x as f32).collect()
    };
    let (p0, g, m0) = (mk(&mut r, 1.0), mk(&mut r, 0.1), mk(&mut r, 0.01));
    let v0: Vec<f32> = mk(&mut r, 0.01).iter().map(|x| x.abs()).collect();
    let args = AdamWConfig::default().step_args(3e-4, 0.7, 5, 20_001);
    let (mut p1, mut m1, mut v1) = (p0.clone(), m0.clone(), v0.clone());
    adamw_reference(&mut p1, &g, &mut m1, &mut v1, &args);
    let (mut p2, mut m2, mut v2) = (p0.clone(), m0.clone(), v0.clone());
    be.adamw(&mut p2, &g, &mut m2, &mut v2, n, &args).unwrap();
    let bits = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(bits(&p1, &p2) && bits(&m1, &m2) && bits(&v1, &v2));
    assert!(
        p1.iter().zip(&p0).any(|(a, b)| a != b),
        "the update must move the parameters"
    );
    let ns = be.norm_sq(&g, n).unwrap();
    assert_eq!((ns.sqrt() as f32).to_bits(), global_norm(&g).to_bits());
    assert!(be
        .adamw(&mut p2, &g[..10].to_vec(), &mut m2, &mut v2, n, &args)
        .is_err());
}
