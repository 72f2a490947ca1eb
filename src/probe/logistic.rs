//! L2-regularised logistic regression, fitted by Newton's method (the probe of one head).
//!
//! Features are standardised first with the training set's mean and population standard
//! deviation (`x̃_j = (x_j − μ_j)/s_j`; a constant feature gets `s_j = 1`). With `z_i = w·x̃_i + b`
//! and labels `y_i ∈ {0, 1}` the objective, as scikit-learn's `LogisticRegression(C = 1/λ)`, is
//!
//! ```text
//! J(w, b) = Σ_i [log(1 + e^{z_i}) − y_i z_i] + λ/2 ‖w‖²        (the bias is not penalised)
//! ∇_w J = X̃ᵀ(p − y) + λw,   ∂_b J = Σ_i (p_i − y_i),   p = σ(z)
//! ∇²J = [X̃ 1]ᵀ diag(p(1 − p)) [X̃ 1] + diag(λ, …, λ, 0)
//! ```
//!
//! `J` is strictly convex for `λ > 0` (the bias direction too, as long as some `p_i(1 − p_i) > 0`),
//! so Newton's method with a backtracking (Armijo) line search converges to the unique optimum
//! from `w = 0, b = 0` in a handful of steps. Everything is f64 and sequential per fit (the
//! Hessian through [`Float::gemm`], the `gemm` crate in a fixed order of summation), so fits
//! are bit-identical run to run.

use anyhow::{bail, ensure, Result};

use crate::float::Float;

/// Settings of one fit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LogisticConfig {
    /// L2 strength λ on the (standardised) weights; scikit-learn's `1/C`. 1.0 as its default.
    pub l2: f64,
    /// Most Newton steps.
    pub max_iter: usize,
    /// Stop when the largest gradient entry is below `tol · max(1, n)`.
    pub tol: f64,
}

impl Default for LogisticConfig {
    fn default() -> Self {
        LogisticConfig {
            l2: 1.0,
            max_iter: 100,
            tol: 1e-10,
        }
    }
}

/// A fitted probe: standardisation, weights and bias in standardised space.
#[derive(Clone, Debug, PartialEq)]
pub struct Logistic {
    /// Per-feature training mean μ.
    pub mean: Vec<f64>,
    /// Per-feature training standard deviation s (1 for constant features).
    pub std: Vec<f64>,
    /// Weights on the standardised features.
    pub w: Vec<f64>,
    /// Bias.
    pub b: f64,
    /// Newton steps taken.
    pub iterations: usize,
}

/// `log(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// `σ(z) = 1 / (1 + e^{−z})` without overflow.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Solves `A x = b` for a symmetric positive-definite `A` `[n, n]` (row-major) by Cholesky.
fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                ensure!(
                    s > 0.0 && s.is_finite(),
                    "logistic regression: the Hessian is not positive definite (pivot {i}: {s})"
                );
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    Ok(x)
}

impl Logistic {
    /// Fits rows `x` `[n, d]` (row-major) to labels `y` `[n]` (0 or 1).
    pub fn fit(x: &[f64], y: &[u8], d: usize, cfg: &LogisticConfig) -> Result<Logistic> {
        let n = y.len();
        ensure!(d > 0, "logistic regression: no features");
        ensure!(
            x.len() == n * d,
            "logistic regression: {} feature values for {n} labels × {d} features",
            x.len()
        );
        ensure!(
            cfg.l2 > 0.0,
            "logistic regression: l2 must be positive, got {}",
            cfg.l2
        );
        if let Some(bad) = y.iter().find(|&&v| v > 1) {
            bail!("logistic regression: label {bad} is not 0 or 1");
        }
        let pos = y.iter().filter(|&&v| v == 1).count();
        ensure!(
            pos > 0 && pos < n,
            "logistic regression: the training labels hold one class only ({n} examples)"
        );
        // Standardise with training statistics.
        let mut mean = vec![0.0; d];
        for row in x.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0.0; d];
        for row in x.chunks_exact(d) {
            for j in 0..d {
                var[j] += (row[j] - mean[j]).powi(2);
            }
        }
        let std: Vec<f64> = var
            .iter()
            .map(|v| {
                let s = (v / n as f64).sqrt();
                if s > 1e-12 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        // Design matrix [X̃ 1] `[n, d+1]`.
        let p1 = d + 1;
        let mut a = vec![0.0; n * p1];
        for (i, row) in x.chunks_exact(d).enumerate() {
            for j in 0..d {
                a[i * p1 + j] = (row[j] - mean[j]) / std[j];
            }
            a[i * p1 + d] = 1.0;
        }
        let yf: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        let objective = |theta: &[f64]| -> f64 {
            let mut j = 0.0;
            for (i, row) in a.chunks_exact(p1).enumerate() {
                let z: f64 = row.iter().zip(theta).map(|(u, v)| u * v).sum();
                j += softplus(z) - yf[i] * z;
            }
            j + 0.5 * cfg.l2 * theta[..d].iter().map(|w| w * w).sum::<f64>()
        };
        let mut theta = vec![0.0; p1];
        let mut j_cur = objective(&theta);
        let mut iterations = 0;
        let mut weighted = vec![0.0; n * p1];
        let mut hess = vec![0.0; p1 * p1];
        for _ in 0..cfg.max_iter {
            // Gradient and the weighted design diag(p(1−p))·A.
            let mut grad = vec![0.0; p1];
            for (i, row) in a.chunks_exact(p1).enumerate() {
                let z: f64 = row.iter().zip(&theta).map(|(u, v)| u * v).sum();
                let p = sigmoid(z);
                let r = p - yf[i];
                let wgt = p * (1.0 - p);
                for k in 0..p1 {
                    grad[k] += r * row[k];
                    weighted[i * p1 + k] = wgt * row[k];
                }
            }
            for k in 0..d {
                grad[k] += cfg.l2 * theta[k];
            }
            let gmax = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            if gmax < cfg.tol * (n as f64).max(1.0) {
                break;
            }
            // H = Aᵀ·(diag(w)·A) + diag(λ, …, λ, ε).
            // SAFETY: `a` and `weighted` are [n, p1] row-major, `hess` is [p1, p1]; no aliasing.
            unsafe {
                f64::gemm(
                    p1,
                    n,
                    p1,
                    1.0,
                    a.as_ptr(),
                    1,
                    p1 as isize,
                    weighted.as_ptr(),
                    p1 as isize,
                    1,
                    0.0,
                    hess.as_mut_ptr(),
                    p1 as isize,
                    1,
                );
            }
            for k in 0..d {
                hess[k * p1 + k] += cfg.l2;
            }
            hess[d * p1 + d] += 1e-12 * n as f64;
            let step = cholesky_solve(&hess, &grad, p1)?;
            let slope: f64 = -grad.iter().zip(&step).map(|(g, s)| g * s).sum::<f64>();
            let mut t = 1.0;
            let mut accepted = false;
            for _ in 0..40 {
                let cand: Vec<f64> = theta.iter().zip(&step).map(|(th, s)| th - t * s).collect();
                let j_new = objective(&cand);
                if j_new <= j_cur + 1e-4 * t * slope {
                    theta = cand;
                    j_cur = j_new;
                    accepted = true;
                    break;
                }
                t *= 0.5;
            }
            iterations += 1;
            if !accepted {
                break; // at the optimum to machine precision
            }
        }
        Ok(Logistic {
            mean,
            std,
            w: theta[..d].to_vec(),
            b: theta[d],
            iterations,
        })
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.w.len()
    }

    /// The logit `w·x̃ + b` of one raw feature row.
    pub fn logit(&self, x: &[f64]) -> f64 {
        let terms = self.w.iter().zip(&self.mean).zip(&self.std).zip(x);
        self.b + terms.map(|(((w, m), s), v)| w * (v - m) / s).sum::<f64>()
    }

    /// `P(label = 1 | x)`.
    pub fn prob(&self, x: &[f64]) -> f64 {
        sigmoid(self.logit(x))
    }

    /// The predicted label of one row: 1 when the logit is positive.
    pub fn predict(&self, x: &[f64]) -> u8 {
        u8::from(self.logit(x) > 0.0)
    }

    /// Share of rows of `x` `[n, d]` whose predicted label equals `y`.
    pub fn accuracy(&self, x: &[f64], y: &[u8]) -> f64 {
        if y.is_empty() {
            return f64::NAN;
        }
        let d = self.dim();
        let right = x
            .chunks_exact(d)
            .zip(y)
            .filter(|(row, &l)| self.predict(row) == l)
            .count();
        right as f64 / y.len() as f64
    }

    /// Mean negative log-likelihood of `y` under the probe (nats).
    pub fn log_loss(&self, x: &[f64], y: &[u8]) -> f64 {
        if y.is_empty() {
            return f64::NAN;
        }
        let d = self.dim();
        let s: f64 = x
            .chunks_exact(d)
            .zip(y)
            .map(|(row, &l)| {
                let z = self.logit(row);
                softplus(z) - l as f64 * z
            })
            .sum();
        s / y.len() as f64
    }

    /// Weights and bias in the raw feature space: `logit = w_raw·x + b_raw` with
    /// `w_raw_j = w_j / s_j`, `b_raw = b − Σ_j w_j μ_j / s_j`.
    pub fn raw_weights(&self) -> (Vec<f64>, f64) {
        let w: Vec<f64> = self.w.iter().zip(&self.std).map(|(w, s)| w / s).collect();
        let b = self.b - w.iter().zip(&self.mean).map(|(w, m)| w * m).sum::<f64>();
        (w, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_small_system() {
        // [[4, 2], [2, 3]] x = [2, 1]  →  x = [0.5, 0].
        let x = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[2.0, 1.0], 2).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
        assert!(cholesky_solve(&[1.0, 2.0, 2.0, 1.0], &[1.0, 1.0], 2).is_err());
    }

    #[test]
    fn stable_sigmoid_and_softplus() {
        assert_eq!(sigmoid(-800.0), 0.0);
        assert_eq!(sigmoid(800.0), 1.0);
        approx::assert_abs_diff_eq!(softplus(800.0), 800.0, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(softplus(0.0), 2f64.ln(), epsilon = 1e-15);
    }
}
