//! Whole-model checks on the CPU executor.
//!
//! - The gradient of every parameter tensor (ParamLayout.tensors, HF names) against central
//!   finite differences of the f64 loss, step `h = 1e-5`, over 6 random directions inside the
//!   tensor plus 10 sampled coordinates: `‖fd − g‖/‖g‖ < 1e-6` per tensor; for the tied model
//!   and for an untied head with `clip_qkv` (the clamp's kink avoided: `c` is chosen with no
//!   q, k or v value within 2e-3 of ±c, a hundred times what the steps move them, and a fifth
//!   to a half of them clipped).
//! - The forward against an independent naive f64 implementation written from the OLMo v1
//!   definition (weights addressed by their HF names, RoPE as HF's rotate-half formula).
//! - f32 against f64, gradient accumulation, determinism, head shifts and hooks, input errors.

// Reference implementations index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

use baddata::backend::cpu::Cpu;
use baddata::backend::Backend;
use baddata::config::ModelConfig;
use baddata::model::{init_params, Model, ParamLayout};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn small_cfg() -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        d_model: 16,
        n_heads: 2,
        d_ff: 24,
        vocab_size: 40,
        vocab_real: 37,
        context: 8,
        rope_theta: 10_000.0,
        layer_norm_eps: 1e-5,
        eos_token_id: 0,
        tie_word_embeddings: true,
        clip_qkv: None,
    }
}

fn tokens(r: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| r.random_range(0..vocab as u32)).collect()
}

fn params64(cfg: &ModelConfig, seed: u64) -> Vec<f64> {
    let lay = ParamLayout::new(cfg);
    init_params(cfg, &lay, seed)
        .iter()
        .map(|&v| v as f64)
        .collect()
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn every_parameter_tensor_matches_finite_differences() {
    let cfg = small_cfg();
    let (b, t) = (2, 7);
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let p = params64(&cfg, 3);
    let toks = tokens(&mut r, b * (t + 1), cfg.vocab_real);
    assert_eq!(ParamLayout::new(&cfg).tensors.len(), 1 + 7 * cfg.n_layers);
    check_every_tensor(&cfg, &p, &toks, b, t, &mut r);
}

/// The untied head (`lm_head.weight`, the last tensor) and the embedding each get their own
/// gradient, and the q, k, v clamp's mask is applied: every tensor against finite differences.
#[test]
fn untied_head_and_clip_qkv_match_finite_differences() {
    let (b, t) = (2, 7);
    let mut r = ChaCha8Rng::seed_from_u64(31);
    let base = untied(small_cfg());
    let p = params64(&base, 32);
    let toks = tokens(&mut r, b * (t + 1), base.vocab_real);
    let cfg = with_safe_clip(&base, &p, &toks, b, t);
    assert_eq!(ParamLayout::new(&cfg).tensors.len(), 2 + 7 * cfg.n_layers);
    check_every_tensor(&cfg, &p, &toks, b, t, &mut r);
}

/// `cfg` with `tie_word_embeddings: false`.
fn untied(cfg: ModelConfig) -> ModelConfig {
    ModelConfig {
        tie_word_embeddings: false,
        ..cfg
    }
}

/// `cfg` with a `clip_qkv` that clips between a fifth and a half of the q, k, v values of the
/// training rows `toks` (inputs `row[..t]`) under parameters `p`, none of them within 2e-3 of
/// ±c (so the finite differences of the gradient checks never cross the clamp's kink). Found by
/// trying the midpoints of the widest gaps between the sorted |values| of an unclipped pass,
/// each checked on the clipped forward (whose later layers the clamp changes).
fn with_safe_clip(cfg: &ModelConfig, p: &[f64], toks: &[u32], b: usize, t: usize) -> ModelConfig {
    const MARGIN: f64 = 2e-3;
    let rows: Vec<&[u32]> = toks.chunks(t + 1).take(b).map(|r| &r[..t]).collect();
    let pre = |c: &ModelConfig| -> Vec<f64> {
        let mut all = Vec::new();
        for row in &rows {
            all.extend(naive_forward(c, p, row, None).2.into_iter().map(f64::abs));
        }
        all
    };
    // an unclipped pass that still records the values (a clamp at f64::MAX changes nothing)
    let mut mags = pre(&ModelConfig {
        clip_qkv: Some(f64::MAX),
        ..cfg.clone()
    });
    mags.sort_by(f64::total_cmp);
    let n = mags.len();
    let mut gaps: Vec<(f64, f64)> = (n / 2..n * 4 / 5)
        .map(|i| (mags[i + 1] - mags[i], 0.5 * (mags[i + 1] + mags[i])))
        .collect();
    gaps.sort_by(|a, b| b.0.total_cmp(&a.0));
    for &(_, c) in gaps.iter().take(40) {
        let clipped = ModelConfig {
            clip_qkv: Some(c),
            ..cfg.clone()
        };
        let vals = pre(&clipped);
        let near = vals
            .iter()
            .map(|v| (v - c).abs())
            .fold(f64::INFINITY, f64::min);
        let share = vals.iter().filter(|&&v| v > c).count() as f64 / vals.len() as f64;
        if near > MARGIN && (0.2..=0.5).contains(&share) {
            eprintln!(
                "clip_qkv {c:.4}: {:.1}% of q, k, v clipped, none within {near:.1e} of ±c",
                100.0 * share
            );
            return clipped;
        }
    }
    panic!("no clip_qkv found with every |q|, |k|, |v| at least {MARGIN} away from it");
}

/// Every tensor's gradient (NaN-poisoned before the pass: each element must be written) against
/// central finite differences along 6 random directions and 10 coordinates.
fn check_every_tensor(
    cfg: &ModelConfig,
    p: &[f64],
    toks: &[u32],
    b: usize,
    t: usize,
    r: &mut ChaCha8Rng,
) {
    let mut model = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let p = p.to_vec();
    let mut g = vec![f64::NAN; p.len()];
    let loss = model
        .forward_backward(&p, &mut g, toks, b, t, false, 1.0)
        .unwrap();
    assert!(
        g.iter().all(|v| v.is_finite()),
        "every gradient element must be written"
    );
    approx::assert_abs_diff_eq!(loss, model.loss(&p, toks, b, t).unwrap(), epsilon = 1e-14);
    let lay = model.layout.clone();
    for (ti, spec) in lay.tensors.iter().enumerate() {
        let range = spec.range();
        let mut dirs: Vec<Vec<f64>> = (0..6)
            .map(|_| {
                range
                    .clone()
                    .map(|_| 2.0 * r.random::<f64>() - 1.0)
                    .collect()
            })
            .collect();
        for _ in 0..10 {
            let mut e = vec![0.0; range.len()];
            e[r.random_range(0..range.len())] = 1.0;
            dirs.push(e);
        }
        let (mut fd, mut an) = (Vec::new(), Vec::new());
        for u in &dirs {
            let mut pp = p.clone();
            let mut pm = p.clone();
            for (i, &ui) in range.clone().zip(u) {
                pp[i] += H * ui;
                pm[i] -= H * ui;
            }
            let lp = model.loss(&pp, toks, b, t).unwrap();
            let lm = model.loss(&pm, toks, b, t).unwrap();
            fd.push((lp - lm) / (2.0 * H));
            an.push(range.clone().zip(u).map(|(i, ui)| g[i] * ui).sum::<f64>());
        }
        let diff: Vec<f64> = fd.iter().zip(&an).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(&an);
        assert!(
            norm(&an) > 1e-8,
            "{}: gradient vanishes, check is vacuous",
            spec.name
        );
        assert!(
            rel < TOL,
            "tensor {ti} {}: ‖fd − g‖/‖g‖ = {rel:e}",
            spec.name
        );
    }
}

// ---------- an independent naive forward ----------

fn ln(x: &[f64], eps: f64) -> Vec<f64> {
    let d = x.len() as f64;
    let mu = x.iter().sum::<f64>() / d;
    let var = x.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / d;
    x.iter().map(|v| (v - mu) / (var + eps).sqrt()).collect()
}

/// `y = W·x` for a `[rows, x.len()]` weight at `off` in `p`.
fn lin(p: &[f64], off: usize, rows: usize, x: &[f64]) -> Vec<f64> {
    let k = x.len();
    (0..rows)
        .map(|r| (0..k).map(|c| p[off + r * k + c] * x[c]).sum())
        .collect()
}

fn hf_rope(x: &[f64], pos: usize, theta: f64) -> Vec<f64> {
    let dh = x.len();
    let half = dh / 2;
    (0..dh)
        .map(|c| {
            let ang = pos as f64 * theta.powf(-((2 * (c % half)) as f64) / dh as f64);
            let rot = if c < half { -x[c + half] } else { x[c - half] };
            x[c] * ang.cos() + rot * ang.sin()
        })
        .collect()
}

/// What [`naive_forward`] returns: logits `[T][V]`, per layer z `[T][D]`, the q, k, v values
/// before the clamp.
type NaiveOut = (Vec<Vec<f64>>, Vec<Vec<Vec<f64>>>, Vec<f64>);

/// Naive OLMo v1 forward for one sequence; returns logits `[T, V]`, each layer's z `[T, D]` and
/// every q, k, v projection output before the clamp (with `clip_qkv`, HF's `clamp_`; the
/// output layer is `lm_head.weight` when untied).
fn naive_forward(
    cfg: &ModelConfig,
    p: &[f64],
    ids: &[u32],
    shift: Option<(usize, &[f64])>,
) -> NaiveOut {
    let lay = ParamLayout::new(cfg);
    let off = |name: String| lay.get(&name).unwrap_or_else(|| panic!("{name}")).offset;
    let (d, f, v, nh) = (cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads);
    let dh = d / nh;
    let e = off("model.embed_tokens.weight".into());
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .map(|&i| p[e + i as usize * d..e + (i as usize + 1) * d].to_vec())
        .collect();
    let t = ids.len();
    let mut zs = Vec::new();
    let mut pre_clamp = Vec::new();
    for l in 0..cfg.n_layers {
        let pre = format!("model.layers.{l}");
        let a: Vec<Vec<f64>> = x.iter().map(|r| ln(r, cfg.layer_norm_eps)).collect();
        let proj = |n: &str| -> Vec<Vec<f64>> {
            a.iter()
                .map(|r| lin(p, off(format!("{pre}.self_attn.{n}_proj.weight")), d, r))
                .collect()
        };
        let (mut q, mut k, mut vv) = (proj("q"), proj("k"), proj("v"));
        if let Some(c) = cfg.clip_qkv {
            for m in [&mut q, &mut k, &mut vv] {
                for x in m.iter_mut().flatten() {
                    pre_clamp.push(*x);
                    *x = x.clamp(-c, c);
                }
            }
        }
        let rot = |m: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            m.iter()
                .enumerate()
                .map(|(pos, r)| {
                    r.chunks(dh)
                        .flat_map(|hd| hf_rope(hd, pos, cfg.rope_theta))
                        .collect()
                })
                .collect()
        };
        let (q, k) = (rot(&q), rot(&k));
        let mut z = vec![vec![0.0; d]; t];
        for h in 0..nh {
            let hs = h * dh..(h + 1) * dh;
            for i in 0..t {
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        q[i][hs.clone()]
                            .iter()
                            .zip(&k[j][hs.clone()])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let ex: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                let sum: f64 = ex.iter().sum();
                for c in hs.clone() {
                    z[i][c] = (0..=i).map(|j| ex[j] / sum * vv[j][c]).sum();
                }
            }
        }
        if let Some((sl, sv)) = shift {
            if sl == l {
                z.iter_mut()
                    .for_each(|r| r.iter_mut().zip(sv).for_each(|(a, b)| *a += b));
            }
        }
        for i in 0..t {
            let o = lin(p, off(format!("{pre}.self_attn.o_proj.weight")), d, &z[i]);
            x[i].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        zs.push(z);
        for xi in x.iter_mut() {
            let m = ln(xi, cfg.layer_norm_eps);
            let g = lin(p, off(format!("{pre}.mlp.gate_proj.weight")), f, &m);
            let u = lin(p, off(format!("{pre}.mlp.up_proj.weight")), f, &m);
            let hh: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let o = lin(p, off(format!("{pre}.mlp.down_proj.weight")), d, &hh);
            xi.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
    }
    let head = lay.get("lm_head.weight").map_or(e, |t| t.offset);
    let logits = x
        .iter()
        .map(|r| lin(p, head, v, &ln(r, cfg.layer_norm_eps)))
        .collect();
    (logits, zs, pre_clamp)
}

#[test]
fn forward_matches_naive_implementation_and_loss_is_mean_cross_entropy() {
    forward_matches_naive(small_cfg());
    // untied, and clipped at a level that clips about a third of q, k, v
    let mut cfg = untied(small_cfg());
    cfg.clip_qkv = Some(0.9);
    forward_matches_naive(cfg);
}

fn forward_matches_naive(cfg: ModelConfig) {
    let (b, t) = (3, 8);
    let mut model = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(2);
    let p = params64(&cfg, 5);
    let toks = tokens(&mut r, b * (t + 1), cfg.vocab_size);
    let ids: Vec<u32> = toks
        .chunks(t + 1)
        .flat_map(|row| row[..t].to_vec())
        .collect();
    let logits = model.logits(&p, &ids, b, t).unwrap();
    let v = cfg.vocab_size;
    let mut ce = 0.0;
    for (bi, row) in toks.chunks(t + 1).enumerate() {
        let (naive, _, pre) = naive_forward(&cfg, &p, &row[..t], None);
        if let Some(c) = cfg.clip_qkv {
            let share = pre.iter().filter(|x| x.abs() > c).count() as f64 / pre.len() as f64;
            assert!(
                (0.1..0.6).contains(&share),
                "{share} of q, k, v clipped: the check needs both sides"
            );
        }
        for i in 0..t {
            for c in 0..v {
                let got = logits[(bi * t + i) * v + c] as f64;
                // logits() returns f32: compare at f32 resolution.
                assert!(
                    (got - naive[i][c]).abs() < 1e-6 * (1.0 + naive[i][c].abs()),
                    "b{bi} t{i} v{c}: {got} vs {}",
                    naive[i][c]
                );
            }
            let lse = naive[i].iter().map(|x| x.exp()).sum::<f64>().ln();
            ce += lse - naive[i][row[i + 1] as usize];
        }
    }
    let loss = model.loss(&p, &toks, b, t).unwrap();
    assert!(
        (loss - ce / (b * t) as f64).abs() < 1e-12,
        "loss {loss} vs {}",
        ce / (b * t) as f64
    );
}

#[test]
fn head_shift_and_hook_z_match_naive_shifted_forward() {
    let cfg = small_cfg();
    let t = 6;
    let mut model = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(4);
    let p = params64(&cfg, 6);
    let ids = tokens(&mut r, t, cfg.vocab_real);
    let shift: Vec<f64> = (0..cfg.d_model).map(|_| r.random::<f64>() - 0.5).collect();
    model.set_head_shift(1, Some(&shift)).unwrap();
    let logits = model.logits(&p, &ids, 1, t).unwrap();
    let (naive, zs, _) = naive_forward(&cfg, &p, &ids, Some((1, &shift)));
    let (plain, _, _) = naive_forward(&cfg, &p, &ids, None);
    let v = cfg.vocab_size;
    let mut moved = 0.0f64;
    for i in 0..t {
        for c in 0..v {
            approx::assert_abs_diff_eq!(logits[i * v + c] as f64, naive[i][c], epsilon = 1e-5);
            moved = moved.max((naive[i][c] - plain[i][c]).abs());
        }
    }
    assert!(moved > 1e-3, "the shift must change the logits");
    for l in 0..cfg.n_layers {
        let (z, bb, tt) = model
            .activation(&format!("blocks.{l}.attn.hook_z"))
            .unwrap();
        assert_eq!((bb, tt), (1, t));
        for i in 0..t {
            for c in 0..cfg.d_model {
                approx::assert_abs_diff_eq!(z[i * cfg.d_model + c], zs[l][i][c], epsilon = 1e-12);
            }
        }
    }
    assert!(model.activation("blocks.9.attn.hook_z").is_none());
    assert!(model.activation("blocks.0.hook_resid_post").is_some());
    let mut g = vec![0.0; p.len()];
    let toks = tokens(&mut r, t + 1, cfg.vocab_real);
    assert!(model
        .forward_backward(&p, &mut g, &toks, 1, t, false, 1.0)
        .is_err());
    model.clear_head_shifts();
    assert!(model
        .forward_backward(&p, &mut g, &toks, 1, t, false, 1.0)
        .is_ok());
    assert!(model.set_head_shift(0, Some(&shift[1..])).is_err());
}

#[test]
fn accumulated_micro_batches_give_the_mean_gradient() {
    accumulated_micro_batches(small_cfg());
    // untied: the embedding's gradient is zeroed, not accumulated, on the first micro-batch
    let mut cfg = untied(small_cfg());
    cfg.clip_qkv = Some(0.9);
    accumulated_micro_batches(cfg);
}

fn accumulated_micro_batches(cfg: ModelConfig) {
    let (b, t) = (2, 5);
    let mut model = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let p = params64(&cfg, 8);
    let t1 = tokens(&mut r, b * (t + 1), cfg.vocab_real);
    let t2 = tokens(&mut r, b * (t + 1), cfg.vocab_real);
    let (mut g1, mut g2, mut acc) = (vec![0.0; p.len()], vec![0.0; p.len()], vec![9.0; p.len()]);
    model
        .forward_backward(&p, &mut g1, &t1, b, t, false, 1.0)
        .unwrap();
    model
        .forward_backward(&p, &mut g2, &t2, b, t, false, 1.0)
        .unwrap();
    model
        .forward_backward(&p, &mut acc, &t1, b, t, false, 0.5)
        .unwrap();
    model
        .forward_backward(&p, &mut acc, &t2, b, t, true, 0.5)
        .unwrap();
    // The two micro-batches concatenated are one batch of 2b rows: same mean gradient.
    let both: Vec<u32> = t1.iter().chain(&t2).copied().collect();
    let mut gb = vec![0.0; p.len()];
    model
        .forward_backward(&p, &mut gb, &both, 2 * b, t, false, 1.0)
        .unwrap();
    let mut worst = 0.0f64;
    for i in 0..p.len() {
        let mean = 0.5 * (g1[i] + g2[i]);
        worst = worst.max((acc[i] - mean).abs()).max((gb[i] - mean).abs());
    }
    assert!(worst < 1e-13, "accumulated vs mean gradient: {worst:e}");
}

#[test]
fn f32_agrees_with_f64() {
    let cfg = ModelConfig {
        n_layers: 3,
        d_model: 48,
        n_heads: 3,
        d_ff: 80,
        vocab_size: 128,
        vocab_real: 100,
        context: 32,
        ..small_cfg()
    };
    let (b, t) = (2, 29);
    let lay = ParamLayout::new(&cfg);
    let p32 = init_params(&cfg, &lay, 11);
    let p64: Vec<f64> = p32.iter().map(|&v| v as f64).collect();
    let mut r = ChaCha8Rng::seed_from_u64(12);
    let toks = tokens(&mut r, b * (t + 1), cfg.vocab_real);
    let mut m32 = Model::new(cfg.clone(), Cpu::<f32>::new()).unwrap();
    let mut m64 = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let (mut g32, mut g64) = (vec![0.0f32; p32.len()], vec![0.0f64; p64.len()]);
    let l32 = m32
        .forward_backward(&p32, &mut g32, &toks, b, t, false, 1.0)
        .unwrap();
    let l64 = m64
        .forward_backward(&p64, &mut g64, &toks, b, t, false, 1.0)
        .unwrap();
    assert!(
        (l32 - l64).abs() < 1e-5 * l64,
        "loss f32 {l32} vs f64 {l64}"
    );
    let diff: Vec<f64> = g32.iter().zip(&g64).map(|(a, b)| *a as f64 - b).collect();
    let rel = norm(&diff) / norm(&g64);
    assert!(rel < 1e-4, "gradient f32 vs f64: {rel:e}");
}

#[test]
fn forward_backward_is_deterministic() {
    let cfg = ModelConfig {
        n_layers: 2,
        d_model: 128,
        n_heads: 4,
        d_ff: 256,
        vocab_size: 512,
        vocab_real: 500,
        context: 64,
        ..small_cfg()
    };
    let (b, t) = (4, 64);
    let lay = ParamLayout::new(&cfg);
    let p = init_params(&cfg, &lay, 13);
    let mut r = ChaCha8Rng::seed_from_u64(14);
    let toks = tokens(&mut r, b * (t + 1), cfg.vocab_real);
    let mut m = Model::new(cfg.clone(), Cpu::<f32>::new()).unwrap();
    let (mut g1, mut g2) = (vec![0.0f32; p.len()], vec![0.0f32; p.len()]);
    let l1 = m
        .forward_backward(&p, &mut g1, &toks, b, t, false, 1.0)
        .unwrap();
    let mut m2 = Model::new(cfg.clone(), Cpu::<f32>::new()).unwrap();
    let l2 = m2
        .forward_backward(&p, &mut g2, &toks, b, t, false, 1.0)
        .unwrap();
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert!(
        g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()),
        "gradients differ between two identical steps"
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cfg = small_cfg();
    let mut model = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let p = params64(&cfg, 1);
    let mut g = vec![0.0; p.len()];
    let ok: Vec<u32> = vec![1; 2 * 9];
    // seq > context
    let e = model
        .forward_backward(&p, &mut g, &[1; 2 * 10], 2, 9, false, 1.0)
        .unwrap_err();
    assert!(format!("{e:#}").contains("context"), "{e:#}");
    // id >= vocab_size
    let mut bad = ok.clone();
    bad[3] = cfg.vocab_size as u32;
    let e = model.loss(&p, &bad, 2, 8).unwrap_err();
    assert!(format!("{e:#}").contains("vocabulary"), "{e:#}");
    // wrong token count
    assert!(model.loss(&p, &ok[1..], 2, 8).is_err());
    assert!(model.logits(&p, &ok, 2, 8).is_err());
    // wrong parameter / gradient length
    assert!(model.loss(&p[1..].to_vec(), &ok, 2, 8).is_err());
    let mut short = vec![0.0; 3];
    assert!(model
        .forward_backward(&p, &mut short, &ok, 2, 8, false, 1.0)
        .is_err());
    // zero batch
    assert!(model.loss(&p, &[], 0, 8).is_err());
    assert!(model.loss(&p, &ok, 2, 8).is_ok());
    assert_eq!(model.backend().name(), "cpu-f64");
}

#[test]
fn adamw_steps_through_the_backend_fit_a_repeated_batch() {
    use baddata::optim::adamw::AdamWConfig;
    let cfg = ModelConfig {
        n_layers: 2,
        d_model: 32,
        n_heads: 4,
        d_ff: 48,
        vocab_size: 64,
        vocab_real: 60,
        context: 16,
        ..small_cfg()
    };
    let (b, t) = (4, 16);
    let mut model = Model::new(cfg.clone(), Cpu::<f32>::new()).unwrap();
    let be = Cpu::<f32>::new();
    let mut p = init_params(&cfg, &model.layout, 21);
    let n = p.len();
    let (mut g, mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let mut r = ChaCha8Rng::seed_from_u64(22);
    let toks = tokens(&mut r, b * (t + 1), cfg.vocab_real);
    let first = model.loss(&p, &toks, b, t).unwrap();
    // Tied head with mitchell init: logits ≈ N(0, 1), so the loss starts near ln V + 1/2.
    assert!(
        (first - (cfg.vocab_size as f64).ln() - 0.5).abs() < 0.3,
        "initial loss {first} should be near ln V"
    );
    let mut last = first;
    for step in 1..=60 {
        last = model
            .forward_backward(&p, &mut g, &toks, b, t, false, 1.0)
            .unwrap();
        let norm = be.norm_sq(&g, n).unwrap().sqrt() as f32;
        let clip = baddata::optim::adamw::clip_scale(norm, 1.0);
        let args = AdamWConfig::default().step_args(1e-2, clip, step, cfg.vocab_size * cfg.d_model);
        be.adamw(&mut p, &g, &mut m, &mut v, n, &args).unwrap();
    }
    assert!(
        last < 0.25 * first,
        "60 steps on one batch should memorise it: {first} -> {last}"
    );
}
