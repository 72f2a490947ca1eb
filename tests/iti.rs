//! ITI is an o_proj bias: adding a shift `s_l` (`[H, dh]`, flattened) to `hook_z` at every
//! position of layer `l` gives the same logits as no shift and the bias `b_l = W_o,l · s_l` added
//! right after o_proj, because o_proj is linear: `(z + s)·W_oᵀ = z·W_oᵀ + W_o·s`. Checked on small
//! random models in f64 and f32, through the full forward pass and the KV-cache decode path, with
//! the bias computed here from the parameter vector (not by the model code).

use baddata::backend::cpu::Cpu;
use baddata::backend::Float;
use baddata::config::ModelConfig;
use baddata::model::generate::KvCache;
use baddata::model::{init_params, Model, ParamLayout};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::two_row_steps;

fn cfg() -> ModelConfig {
    ModelConfig {
        n_layers: 3,
        d_model: 32,
        n_heads: 4,
        d_ff: 40,
        vocab_size: 128,
        vocab_real: 100,
        context: 16,
        rope_theta: 10_000.0,
        layer_norm_eps: 1e-5,
        eos_token_id: 3,
        tie_word_embeddings: true,
        clip_qkv: None,
    }
}

/// Steered layers, and the heads shifted in each (the other heads' slots stay zero).
const STEERED: &[(usize, &[usize])] = &[(0, &[0, 2]), (2, &[1, 2, 3])];

/// `max |got − want| / max |want|` over all values.
fn rel_err<T: Float>(got: &[T], want: &[T]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, x| m.max(x.f64().abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((a.f64() - b.f64()).abs()));
    diff / scale
}

/// `W·s` for the o_proj weight of layer `l` (`W` `[D_out, D_in]` row-major at `offset`, as
/// `y = z·Wᵀ` reads it), summed in f64; with `transpose`, `Wᵀ·s` (the wrong bias, a control).
fn o_times<T: Float>(params: &[T], offset: usize, d: usize, s: &[T], transpose: bool) -> Vec<T> {
    (0..d)
        .map(|i| {
            let sum: f64 = (0..d)
                .map(|j| {
                    let w = if transpose {
                        params[offset + j * d + i]
                    } else {
                        params[offset + i * d + j]
                    };
                    w.f64() * s[j].f64()
                })
                .sum();
            T::of(sum)
        })
        .collect()
}

/// The shift model steers `STEERED` at every position; the bias model has no shift and the
/// biases `W_o·s`. Both must give the same logits (full forward and KV-cache decode) within
/// `tol` (relative to the largest logit), while the shift itself moves them by far more.
fn shift_equals_bias<T: Float>(tol: f64, what: &str) {
    let cfg = cfg();
    let layout = ParamLayout::new(&cfg);
    let (d, dh, v) = (cfg.d_model, cfg.d_head(), cfg.vocab_size);
    // Weights 4× the initialisation so that the logits vary by several units.
    let params: Vec<T> = init_params(&cfg, &layout, 21)
        .into_iter()
        .map(|x| T::of(4.0 * x as f64))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut shift_model = Model::new(cfg.clone(), Cpu::<T>::new()).unwrap();
    let mut bias_model = Model::new(cfg.clone(), Cpu::<T>::new()).unwrap();
    let mut wrong_model = Model::new(cfg.clone(), Cpu::<T>::new()).unwrap();
    let mut plain_model = Model::new(cfg.clone(), Cpu::<T>::new()).unwrap();
    for &(l, heads) in STEERED {
        let mut s = vec![T::of(0.0); d];
        for &h in heads {
            for x in &mut s[h * dh..(h + 1) * dh] {
                *x = T::of(3.0 * (rng.random::<f64>() - 0.5));
            }
        }
        let o = layout.layers[l].o.offset;
        shift_model.set_head_shift(l, Some(&s)).unwrap();
        bias_model
            .set_o_bias(l, Some(&o_times(&params, o, d, &s, false)))
            .unwrap();
        wrong_model
            .set_o_bias(l, Some(&o_times(&params, o, d, &s, true)))
            .unwrap();
    }
    let (b, t) = (2, 12);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(0..cfg.vocab_real as u32))
        .collect();

    // Full forward pass.
    let shifted = shift_model.logits_exact(&params, &ids, b, t).unwrap();
    let biased = bias_model.logits_exact(&params, &ids, b, t).unwrap();
    let plain = plain_model.logits_exact(&params, &ids, b, t).unwrap();
    let wrong = wrong_model.logits_exact(&params, &ids, b, t).unwrap();
    let scale = shifted.iter().fold(0f64, |m, x| m.max(x.f64().abs()));
    assert!(scale > 1.0, "{what}: logits too small to compare ({scale})");
    let err = rel_err(&biased, &shifted);
    assert!(
        err < tol,
        "{what}: full forward: bias W_o·s vs head shift: relative error {err:e} (tolerance {tol:e})"
    );
    let moved = rel_err(&plain, &shifted);
    assert!(
        moved > 1e3 * tol,
        "{what}: the shift moves the logits by only {moved:e}; the check would say nothing"
    );
    let off = rel_err(&wrong, &shifted);
    assert!(
        off > 1e2 * tol,
        "{what}: the transposed bias Wᵀ·s also matches ({off:e}): the check cannot tell"
    );

    // KV-cache decode: row 0 prefills 5 tokens then decodes one at a time, row 1 decodes one at
    // a time from position 0; head shifts at every position (shift_from 0).
    let rows: Vec<&[u32]> = ids.chunks_exact(t).collect();
    let mut caches = [
        KvCache::<T>::new(&cfg, b),
        KvCache::<T>::new(&cfg, b),
        KvCache::<T>::new(&cfg, b),
    ];
    let models = [&shift_model, &bias_model, &plain_model];
    let steps = two_row_steps([rows[0], rows[1]], 0, 5);
    let mut max_err = 0f64;
    let mut max_moved = 0f64;
    for (k, chunks) in steps.iter().enumerate() {
        let out: Vec<Vec<Vec<T>>> = models
            .iter()
            .zip(caches.iter_mut())
            .map(|(m, c)| m.decode_exact(&params, c, chunks).unwrap())
            .collect();
        for (j, c) in chunks.iter().enumerate() {
            let err = rel_err(&out[1][j], &out[0][j]);
            assert!(
                err < tol,
                "{what}: decode step {k}, row {}: bias vs head shift: relative error {err:e} \
                 (tolerance {tol:e})",
                c.row
            );
            max_err = max_err.max(err);
            max_moved = max_moved.max(rel_err(&out[2][j], &out[0][j]));
            // And the cache path agrees with the full forward of the shifted model.
            let p = caches[0].len(c.row) - 1;
            let full = &shifted[(c.row * t + p) * v..(c.row * t + p + 1) * v];
            let err = rel_err(&out[0][j], full);
            assert!(
                err < 1e2 * tol,
                "{what}: decode step {k}, row {}: KV cache vs full forward {err:e}",
                c.row
            );
        }
    }
    assert!(
        max_moved > 1e3 * tol,
        "{what}: decode: the shift moves the logits by only {max_moved:e}"
    );
    assert_eq!((caches[1].len(0), caches[1].len(1)), (t, t));
    eprintln!(
        "{what}: relative error full {err:e}, decode {max_err:e}; shift moves logits by {moved:e}"
    );
}

#[test]
fn head_shift_at_all_positions_is_an_o_proj_bias_f64() {
    shift_equals_bias::<f64>(1e-12, "f64");
}

#[test]
fn head_shift_at_all_positions_is_an_o_proj_bias_f32() {
    shift_equals_bias::<f32>(1e-5, "f32");
}

#[test]
fn o_bias_is_checked_and_inference_only() {
    let cfg = cfg();
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f64> = init_params(&cfg, &layout, 3)
        .into_iter()
        .map(|x| x as f64)
        .collect();
    let mut model = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let err = model
        .set_o_bias(1, Some(&vec![0.0; cfg.d_model - 1]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer 1") && err.contains("expected d_model = 32 values, got 31"),
        "{err}"
    );
    let err = model
        .set_o_bias(3, Some(&vec![0.0; cfg.d_model]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 3 out of range"), "{err}");
    assert!(model.o_bias(0).is_none());

    let ids: Vec<u32> = (0..6).map(|i| (i * 7 + 1) % 100).collect();
    let plain = model.logits_exact(&params, &ids, 1, 6).unwrap();
    let bias: Vec<f64> = (0..cfg.d_model).map(|i| (i as f64 * 0.3).cos()).collect();
    model.set_o_bias(0, Some(&bias)).unwrap();
    assert_eq!(model.o_bias(0).unwrap(), &bias);
    let biased = model.logits_exact(&params, &ids, 1, 6).unwrap();
    assert!(rel_err(&biased, &plain) > 1e-3, "the bias must act");
    let toks: Vec<u32> = (0..7).map(|i| (i * 5 + 2) % 100).collect();
    let mut g = vec![0.0; params.len()];
    let err = model
        .forward_backward(&params, &mut g, &toks, 1, 6, false, 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("o_proj biases are set") && err.contains("inference only"),
        "{err}"
    );
    model.set_o_bias(0, None).unwrap();
    model
        .forward_backward(&params, &mut g, &toks, 1, 6, false, 1.0)
        .unwrap();
    let again = model.logits_exact(&params, &ids, 1, 6).unwrap();
    assert_eq!(again, plain, "clearing the bias restores the model");
}
