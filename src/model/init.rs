//! OLMo's "mitchell" initialisation: every matrix drawn from a normal truncated at ±3σ, with
//! σ = 1/√d_in for the embedding (d_in taken as d_model) and the input projections (q, k, v,
//! gate, up), σ = 1/√(2·d_model·(l+1)) for `o_proj` and σ = 1/√(2·d_ff·(l+1)) for `down_proj` of
//! layer `l` (depth-scaled so deep residual streams do not grow).

use super::params::ParamLayout;
use crate::config::ModelConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Standard deviation of the tensor named `name` (an HF name from [`ParamLayout`]).
pub fn init_std(cfg: &ModelConfig, name: &str) -> f64 {
    let (d, f) = (cfg.d_model as f64, cfg.d_ff as f64);
    let layer = name
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|l| l.parse::<usize>().ok());
    match layer {
        Some(l) if name.ends_with("o_proj.weight") => 1.0 / (2.0 * d * (l + 1) as f64).sqrt(),
        Some(l) if name.ends_with("down_proj.weight") => 1.0 / (2.0 * f * (l + 1) as f64).sqrt(),
        _ => 1.0 / d.sqrt(),
    }
}

/// One draw from N(0, 1) truncated to [−3, 3] (Box–Muller, rejecting the tails).
fn truncated_standard_normal(rng: &mut ChaCha20Rng) -> f64 {
    loop {
        let u1: f64 = rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        // u1 in [0, 1): use 1 − u1 in (0, 1] so the log is finite.
        let r = (-2.0 * (1.0 - u1).ln()).sqrt();
        let z = r * (2.0 * std::f64::consts::PI * u2).cos();
        if z.abs() <= 3.0 {
            return z;
        }
    }
}

/// The flat parameter vector of `cfg` (laid out as `layout`), drawn deterministically from
/// `seed`: tensors are filled in buffer order from one ChaCha20 stream.
pub fn init_params(cfg: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut p = vec![0.0f32; layout.len()];
    for t in &layout.tensors {
        let std = init_std(cfg, &t.name);
        for x in &mut p[t.range()] {
            *x = (std * truncated_standard_normal(&mut rng)) as f32;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_deterministic_truncated_and_scaled() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let lay = ParamLayout::new(&cfg);
        let a = init_params(&cfg, &lay, 7);
        assert_eq!(a, init_params(&cfg, &lay, 7));
        assert_ne!(a[..100], init_params(&cfg, &lay, 8)[..100]);
        for t in &lay.tensors {
            let std = init_std(&cfg, &t.name);
            let x = &a[t.range()];
            let max = x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
            assert!(
                max <= 3.0 * std * (1.0 + 1e-6),
                "{}: max {max} > 3σ",
                t.name
            );
            let var = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
            // A normal truncated at ±3σ has variance 0.9733·σ².
            let ratio = var.sqrt() / std;
            assert!(
                (ratio - 0.9866).abs() < 0.02,
                "{}: std ratio {ratio}",
                t.name
            );
        }
        let s = init_std(&cfg, "model.layers.2.self_attn.o_proj.weight");
        assert!((s - 1.0 / (2.0f64 * 256.0 * 3.0).sqrt()).abs() < 1e-15);
        let s = init_std(&cfg, "model.layers.0.mlp.down_proj.weight");
        assert!((s - 1.0 / (2.0f64 * 1024.0).sqrt()).abs() < 1e-15);
    }
}
