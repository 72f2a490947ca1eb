//! The statistics the sweep reports: means with t confidence intervals over seeds, and a
//! rank test of two groups of per-head probe accuracies.

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Mean of `x` (NaN when empty).
pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    // (the empty sum of f64 is -0.0; + 0.0 makes it 0)
    (x.iter().sum::<f64>() + 0.0) / x.len() as f64
}

/// Sample standard deviation (n − 1); 0 for fewer than two values.
pub fn sd(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// A mean and the half-width of its 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    /// The mean.
    pub mean: f64,
    /// Half-width of the 95% interval (`t(0.975, n − 1) · sd / √n`); `null` (NaN) for one value.
    pub ci95: f64,
    /// Values averaged.
    pub n: usize,
}

/// The mean of `x` with its 95% t interval over the values (e.g. over seeds).
pub fn estimate(x: &[f64]) -> Estimate {
    let n = x.len();
    let ci95 = if n < 2 {
        f64::NAN
    } else {
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
            .map(|d| d.inverse_cdf(0.975))
            .unwrap_or(f64::NAN);
        t * sd(x) / (n as f64).sqrt()
    };
    Estimate {
        mean: mean(x),
        ci95,
        n,
    }
}

/// The result of a one-sided Mann–Whitney U test that `b` tends to exceed `a`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RankTest {
    /// U statistic of `b` (pairs where the `b` value is larger, ties counting one half).
    pub u: f64,
    /// `u / (n_a · n_b)`: the probability that a random `b` exceeds a random `a` (0.5: no
    /// difference).
    pub effect: f64,
    /// One-sided p-value, normal approximation with the tie-corrected variance and a
    /// continuity correction.
    pub p: f64,
}

/// Mann–Whitney U test of `b > a` (see [`RankTest`]); `None` when a group is empty.
pub fn mann_whitney_greater(a: &[f64], b: &[f64]) -> Option<RankTest> {
    let (na, nb) = (a.len(), b.len());
    if na == 0 || nb == 0 {
        return None;
    }
    // ranks of the pooled values, ties sharing the mean rank
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&v| (v, false))
        .chain(b.iter().map(|&v| (v, true)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len();
    let mut ranks = vec![0.0; n];
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        ranks[i..=j].iter_mut().for_each(|x| *x = r);
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let rb: f64 = all
        .iter()
        .zip(&ranks)
        .filter(|(v, _)| v.1)
        .map(|(_, r)| r)
        .sum();
    let (na, nb, nf) = (na as f64, nb as f64, n as f64);
    let u = rb - nb * (nb + 1.0) / 2.0;
    let mu = na * nb / 2.0;
    let var = na * nb / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    let p = if var <= 0.0 {
        0.5
    } else {
        let z = (u - mu - 0.5) / var.sqrt();
        1.0 - Normal::standard().cdf(z)
    };
    Some(RankTest {
        u,
        effect: u / (na * nb),
        p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_interval_of_three_values() {
        // t(0.975, 2) = 4.302653; sd of 1, 2, 3 is 1
        let e = estimate(&[1.0, 2.0, 3.0]);
        approx::assert_abs_diff_eq!(e.mean, 2.0, epsilon = 1e-12);
        assert!(
            (e.ci95 - 4.302_653 / 3f64.sqrt()).abs() < 1e-5,
            "{}",
            e.ci95
        );
        assert!(estimate(&[5.0]).ci95.is_nan());
    }

    #[test]
    fn mann_whitney_on_hand_counted_groups() {
        // a = {1, 2}, b = {3, 4, 2}: pairs (b > a): 3>1,3>2,4>1,4>2,2>1 = 5, tie 2=2 counts 0.5
        let t = mann_whitney_greater(&[1.0, 2.0], &[3.0, 4.0, 2.0]).unwrap();
        assert!(approx::abs_diff_eq!(t.u, 5.5, epsilon = 1e-12), "{}", t.u);
        approx::assert_abs_diff_eq!(t.effect, 5.5 / 6.0, epsilon = 1e-12);
        // identical groups: no evidence
        let t = mann_whitney_greater(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((t.effect - 0.5).abs() < 1e-12 && t.p > 0.5);
        // clearly separated groups of 20: tiny p (exact one-sided p is 1/C(40,20) ≈ 7e-12;
        // the normal approximation gives about 1e-8)
        let a: Vec<f64> = (0..20).map(|i| i as f64).collect();
        let b: Vec<f64> = (0..20).map(|i| 100.0 + i as f64).collect();
        let t = mann_whitney_greater(&a, &b).unwrap();
        assert!(t.p < 1e-6 && t.effect == 1.0, "{t:?}");
        assert!(mann_whitney_greater(&[], &[1.0]).is_none());
    }
}
