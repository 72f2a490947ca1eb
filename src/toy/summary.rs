//! Means and confidence intervals over seeds.

use serde::Serialize;

/// Two-sided 95% quantiles of Student's t, `t_{0.975, df}` for `df = 1..=30` (standard tables).
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// `t_{0.975, df}`: the table for `df ≤ 30`, above it the Cornish–Fisher expansion around the
/// normal quantile 1.959964 (within 1e-3 of the exact value from `df = 30` on). NaN for `df = 0`.
pub fn t975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df - 1],
        _ => {
            let (z, v) = (1.959_964f64, df as f64);
            z + (z.powi(3) + z) / (4.0 * v)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}

/// Mean, sample standard deviation and the 95% t interval of the mean of some values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeanCi {
    /// Number of values.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator); NaN for one value.
    pub sd: f64,
    /// Lower end of the 95% confidence interval of the mean (`mean − t·sd/√n`).
    pub ci_lo: f64,
    /// Upper end.
    pub ci_hi: f64,
}

impl MeanCi {
    /// The summary of `xs` (NaN fields for an empty slice; an interval of NaN for one value).
    pub fn of(xs: &[f64]) -> MeanCi {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        let half = t975(n.saturating_sub(1)) * sd / (n as f64).sqrt();
        MeanCi {
            n,
            mean,
            sd,
            ci_lo: mean - half,
            ci_hi: mean + half,
        }
    }

    /// Whether the interval lies wholly above zero.
    pub fn above_zero(&self) -> bool {
        self.ci_lo > 0.0
    }
}
