//! Learning-rate schedule: linear warm-up, then cosine decay to a floor of `final_frac · lr`.

use serde::{Deserialize, Serialize};

/// OLMo's schedule: `lr·(t+1)/warmup` during warm-up, then a half cosine from `lr` down to
/// `final_frac·lr` at `total_steps`, flat after that.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Peak learning rate.
    pub lr: f32,
    /// Warm-up steps.
    pub warmup: u64,
    /// Step at which the floor is reached.
    pub total_steps: u64,
    /// Floor as a fraction of `lr` (OLMo: 0.1).
    pub final_frac: f32,
}

impl CosineSchedule {
    /// Learning rate for (0-based) step `t`.
    pub fn at(&self, t: u64) -> f32 {
        let peak = self.lr as f64;
        let floor = peak * self.final_frac as f64;
        if t < self.warmup {
            return (peak * (t + 1) as f64 / self.warmup as f64) as f32;
        }
        if t >= self.total_steps || self.total_steps <= self.warmup {
            return floor as f32;
        }
        let progress = (t - self.warmup) as f64 / (self.total_steps - self.warmup) as f64;
        (floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_peak_and_floor() {
        let s = CosineSchedule {
            lr: 1e-3,
            warmup: 10,
            total_steps: 110,
            final_frac: 0.1,
        };
        approx::assert_abs_diff_eq!(s.at(0), 1e-4, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(s.at(9), 1e-3, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(s.at(10), 1e-3, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(s.at(60), 0.55e-3, epsilon = 1e-8);
        approx::assert_abs_diff_eq!(s.at(110), 1e-4, epsilon = 1e-9);
        approx::assert_abs_diff_eq!(s.at(500), 1e-4, epsilon = 1e-9);
        for t in 10..110 {
            assert!(s.at(t + 1) <= s.at(t));
        }
    }
}
