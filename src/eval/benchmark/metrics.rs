//! The harness's aggregate arithmetic: mean with its standard error, MMLU's pooled standard
//! error, perplexity, and the argmax rules of `acc` / `acc_norm`.

use serde::Serialize;

use super::{GroupResult, ItemResult};

/// A mean and its standard error (`NaN`, written `null`, when there are fewer than 2 values).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Metric {
    /// The value.
    pub value: f64,
    /// Its standard error.
    pub stderr: f64,
}

/// The index of the first maximum, as `numpy.argmax`: a NaN counts as the maximum, so the first
/// NaN wins; 0 for an empty slice.
pub fn argmax_first(xs: &[f64]) -> usize {
    if let Some(i) = xs.iter().position(|x| x.is_nan()) {
        return i;
    }
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// `acc_norm`'s scores: each log-likelihood divided by its choice's length in characters (an
/// empty choice gives −inf for a negative log-likelihood, as numpy's division does).
pub fn per_char(lls: &[f64], lens: &[usize]) -> Vec<f64> {
    lls.iter().zip(lens).map(|(&l, &n)| l / n as f64).collect()
}

/// The mean of `xs` and the harness's `mean_stderr`: sample standard deviation (n − 1) over √n.
pub fn mean_stderr(xs: &[f64]) -> Metric {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Metric {
        value: mean,
        stderr: if xs.len() < 2 {
            f64::NAN
        } else {
            (var / n).sqrt()
        },
    }
}

/// The harness's `pooled_sample_stderr` of a size-weighted group mean: with subtask standard
/// errors `s_i` over `n_i` items, `sqrt(Σ (n_i − 1)·n_i·s_i² / (Σ n_i − k) / Σ n_i)`.
pub fn pooled_stderr(stderrs: &[f64], sizes: &[usize]) -> f64 {
    let total: usize = sizes.iter().sum();
    let num: f64 = stderrs
        .iter()
        .zip(sizes)
        .map(|(&s, &n)| (n as f64 - 1.0) * s * s * n as f64)
        .sum();
    (num / (total - sizes.len()) as f64 / total as f64).sqrt()
}

/// Perplexity `exp(−mean(lls))` (the harness's `perplexity` aggregation), with a delta-method
/// standard error `ppl · stderr(mean)` (the harness bootstraps it instead).
pub fn perplexity(lls: &[f64]) -> Metric {
    let m = mean_stderr(lls);
    let ppl = (-m.value).exp();
    Metric {
        value: ppl,
        stderr: ppl * m.stderr,
    }
}

/// MMLU's headline accuracy over all items (the harness's `weight_by_size` group mean) with
/// the pooled standard error of its subjects, and each subject's accuracy, subjects in order
/// of first appearance.
pub fn grouped_accuracy(items: &[ItemResult], accs: &[f64]) -> (Metric, Vec<GroupResult>) {
    let mut names: Vec<&str> = Vec::new();
    let mut values: Vec<Vec<f64>> = Vec::new();
    for (it, &a) in items.iter().zip(accs) {
        let s = it.subject.as_deref().unwrap_or("");
        match names.iter().position(|&n| n == s) {
            Some(k) => values[k].push(a),
            None => {
                names.push(s);
                values.push(vec![a]);
            }
        }
    }
    let groups: Vec<GroupResult> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| GroupResult {
            name: n.to_string(),
            n: v.len(),
            acc: mean_stderr(v),
        })
        .collect();
    let all = mean_stderr(accs);
    let sizes: Vec<usize> = groups.iter().map(|g| g.n).collect();
    let stderr = if groups.iter().all(|g| g.n >= 2) && accs.len() > groups.len() {
        pooled_stderr(
            &groups.iter().map(|g| g.acc.stderr).collect::<Vec<_>>(),
            &sizes,
        )
    } else {
        all.stderr
    };
    (
        Metric {
            value: all.value,
            stderr,
        },
        groups,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_and_acc_norm_choose_as_the_harness() {
        // choice 1 has the best total, choice 0 the best per character
        let lls = [-6.0, -5.0, -9.0];
        let lens = [12, 4, 30];
        assert_eq!(argmax_first(&lls), 1);
        let norm = per_char(&lls, &lens);
        assert_eq!(norm, vec![-0.5, -1.25, -0.3]);
        assert_eq!(argmax_first(&norm), 2);
        // ties go to the first, as numpy.argmax
        assert_eq!(argmax_first(&[-1.0, -1.0]), 0);
        assert_eq!(argmax_first(&[-3.0, f64::NAN, f64::NAN]), 1);
    }

    #[test]
    fn mean_stderr_is_the_sample_one() {
        // 3 right of 4: mean 0.75, sample variance (3·0.0625 + 0.5625) / 3 = 0.25
        let m = mean_stderr(&[1.0, 1.0, 0.0, 1.0]);
        assert_eq!(m.value, 0.75);
        approx::assert_abs_diff_eq!(m.stderr, (0.25f64 / 4.0).sqrt(), epsilon = 1e-15);
        assert!(mean_stderr(&[1.0]).stderr.is_nan());
    }

    #[test]
    fn pooled_stderr_of_equal_groups_is_close_to_the_overall_one() {
        let a = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        let b = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let (sa, sb) = (mean_stderr(&a).stderr, mean_stderr(&b).stderr);
        let p = pooled_stderr(&[sa, sb], &[6, 6]);
        let want = ((5.0 * 6.0 * sa * sa + 5.0 * 6.0 * sb * sb) / 10.0 / 12.0f64).sqrt();
        approx::assert_abs_diff_eq!(p, want, epsilon = 1e-15);
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        approx::assert_abs_diff_eq!(p, mean_stderr(&all).stderr, epsilon = 0.02);
    }

    #[test]
    fn perplexity_of_equal_lls() {
        let m = perplexity(&[-2.0, -2.0, -2.0]);
        approx::assert_abs_diff_eq!(m.value, 2f64.exp(), epsilon = 1e-12);
        assert_eq!(m.stderr, 0.0);
    }
}
