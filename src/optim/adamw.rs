//! AdamW with decoupled weight decay, bias correction and global-norm clipping: the CPU
//! reference that `cuda/adamw.cu` must match.
//!
//! The whole model is one flat fp32 vector (see [`crate::model::params`]). Weight decay applies
//! to every element at index `>= no_decay_len`: the layout puts the embedding (which OLMo does
//! not decay, `decay_embeddings: false`) first and every projection matrix after it.
//!
//! For step `t` (1-based), learning rate `lr`, clip scale `s` and gradient `g`:
//! ```text
//! g  = s · g
//! p  = p − lr·wd·p                      (decayed elements only; decoupled, as torch.optim.AdamW)
//! m  = β1·m + (1−β1)·g
//! v  = β2·v + (1−β2)·g²
//! p  = p − lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)
//! ```

use serde::{Deserialize, Serialize};

use crate::backend::StepArgs;

/// AdamW hyper-parameters (OLMo-1B's by default).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// ε, added to √v̂.
    pub eps: f32,
    /// Decoupled weight decay coefficient.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-5,
            weight_decay: 0.1,
        }
    }
}

/// Optimizer state: the two moment vectors and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// Hyper-parameters.
    pub cfg: AdamWConfig,
    /// First moment, one per parameter.
    pub m: Vec<f32>,
    /// Second moment, one per parameter.
    pub v: Vec<f32>,
    /// Number of updates applied so far.
    pub step: u64,
    /// Elements `[0, no_decay_len)` get no weight decay.
    pub no_decay_len: usize,
}

impl AdamW {
    /// Fresh state for `n` parameters of which the first `no_decay_len` are not decayed.
    pub fn new(cfg: AdamWConfig, n: usize, no_decay_len: usize) -> Self {
        AdamW {
            cfg,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            no_decay_len,
        }
    }

    /// Applies one update with learning rate `lr`, gradients multiplied by `clip_scale` first.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32, clip_scale: f32) {
        self.step += 1;
        adamw_reference(
            params,
            grads,
            &mut self.m,
            &mut self.v,
            &self
                .cfg
                .step_args(lr, clip_scale, self.step, self.no_decay_len),
        );
    }
}

impl AdamWConfig {
    /// The op's scalars ([`StepArgs`]) for update number `step` (1-based), the bias corrections
    /// `1 − βᵗ` computed in f64 and rounded once.
    pub fn step_args(&self, lr: f32, clip_scale: f32, step: u64, no_decay_len: usize) -> StepArgs {
        StepArgs {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            clip_scale,
            bias1: 1.0 - (self.beta1 as f64).powi(step as i32) as f32,
            bias2: 1.0 - (self.beta2 as f64).powi(step as i32) as f32,
            no_decay_len: no_decay_len as u64,
        }
    }
}

/// The elementwise AdamW update over flat buffers (see the module docs for the math), as the
/// CPU executor runs it (in parallel chunks; each element's arithmetic is independent).
pub fn adamw_reference(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], a: &StepArgs) {
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
    crate::backend::cpu::adamw::adamw(p, g, m, v, a);
}

/// Global L2 norm of a gradient vector, summed deterministically: fixed 4096-element chunks
/// in f64, each chunk's partial sum added in order (the GPU grad-norm kernel reduces in the
/// same two levels).
pub fn global_norm(g: &[f32]) -> f32 {
    crate::backend::cpu::adamw::norm_sq(g).sqrt() as f32
}

/// The factor that brings the gradient's norm down to `max_norm` (1.0 when already below, or
/// when clipping is off, `max_norm <= 0`).
pub fn clip_scale(norm: f32, max_norm: f32) -> f32 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textbook AdamW written independently (per element, f64, PyTorch's order of operations)
    /// against the flat reference over three steps.
    #[test]
    fn matches_textbook_over_three_steps() {
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-5,
            weight_decay: 0.1,
        };
        let n = 37;
        let no_decay = 11;
        let mut p: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut opt = AdamW::new(cfg, n, no_decay);
        let mut tp: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let mut tm = vec![0f64; n];
        let mut tv = vec![0f64; n];
        let lrs = [1e-3f32, 5e-4, 2e-4];
        for (t, &lr) in lrs.iter().enumerate() {
            let g: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + t * 13) as f32 * 0.11).cos())
                .collect();
            let scale = 0.5f32;
            opt.update(&mut p, &g, lr, scale);
            let step = (t + 1) as i32;
            for i in 0..n {
                let gi = g[i] as f64 * scale as f64;
                if i >= no_decay {
                    tp[i] *= 1.0 - lr as f64 * 0.1;
                }
                tm[i] = 0.9 * tm[i] + 0.1 * gi;
                tv[i] = 0.95 * tv[i] + 0.05 * gi * gi;
                let mh = tm[i] / (1.0 - 0.9f64.powi(step));
                let vh = tv[i] / (1.0 - 0.95f64.powi(step));
                tp[i] -= lr as f64 * mh / (vh.sqrt() + 1e-5);
            }
        }
        for i in 0..n {
            assert!(
                (p[i] as f64 - tp[i]).abs() < 1e-6,
                "param {i}: {} vs {}",
                p[i],
                tp[i]
            );
        }
        // the untouched embedding prefix and the decayed rest really differ in treatment
        assert_eq!(opt.step, 3);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let g = vec![3.0f32, 4.0];
        let n = global_norm(&g);
        approx::assert_abs_diff_eq!(n, 5.0, epsilon = 1e-6);
        let s = clip_scale(n, 1.0);
        approx::assert_abs_diff_eq!(n * s, 1.0, epsilon = 1e-5);
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
    }
}
