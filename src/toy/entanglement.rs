//! Feature directions and their entanglement.
//!
//! A feature's direction comes from linear probes: for each token `t`, one L2 logistic
//! regression (the project's probe, [`Logistic`]) separates the residual-stream vectors of the
//! positions whose current token is `t` into "this feature's sequence" and "any other"; the
//! direction is the mean of those probes' unit normals (in the raw activation space). The
//! entanglement of feature `i` is `max_{j ≠ i} |cos(v_i, v_j)|`.
//!
//! For `N` unit vectors in `M < N` dimensions that maximum is at least the Welch bound
//! `√((N − M)/((N − 1)·M))` (0.4264 for 12 lines in 4 dimensions). The bound is met only by
//! equiangular tight frames, which do not exist for `N = 12, M = 4`; the best known 12 lines in
//! 4 dimensions, those of the D4 root system (±eᵢ ± eⱼ), reach 0.5.

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::probe::logistic::{Logistic, LogisticConfig};

/// `a·b / (‖a‖‖b‖)`; NaN when either vector is zero.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        f64::NAN
    } else {
        dot / (na * nb)
    }
}

/// The entanglement of each of `dirs` (all the same length, at least two): the largest `|cos|`
/// with any other direction. Zero vectors are no direction: their own entanglement is NaN and
/// they do not count for the others.
pub fn entanglement(dirs: &[Vec<f64>]) -> Result<Vec<f64>> {
    ensure!(
        dirs.len() >= 2,
        "entanglement needs at least two directions"
    );
    let d = dirs[0].len();
    ensure!(
        d > 0 && dirs.iter().all(|v| v.len() == d),
        "entanglement: directions of unequal or zero length"
    );
    Ok((0..dirs.len())
        .map(|i| {
            (0..dirs.len())
                .filter(|&j| j != i)
                .map(|j| cosine(&dirs[i], &dirs[j]).abs())
                .fold(f64::NAN, |m, c| if c.is_nan() || c <= m { m } else { c })
        })
        .collect())
}

/// The Welch bound `√((n − m)/((n − 1)·m))` on the largest `|cos|` among `n` unit vectors in
/// `m` dimensions (0 when `n ≤ m`: orthogonal vectors fit).
pub fn welch_bound(n: usize, m: usize) -> f64 {
    if n <= m || n < 2 || m == 0 {
        return 0.0;
    }
    (((n - m) as f64) / (((n - 1) * m) as f64)).sqrt()
}

/// The 12 lines of the D4 root system in 4 dimensions, one vector `eᵢ ± eⱼ` (`i < j`) per line
/// (not normalised): the best-known packing of 12 lines in 4 dimensions, largest `|cos|` 1/2.
pub fn d4_lines() -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..4 {
        for j in i + 1..4 {
            for s in [1.0, -1.0] {
                let mut v = vec![0.0; 4];
                v[i] = 1.0;
                v[j] = s;
                out.push(v);
            }
        }
    }
    out
}

/// The largest `|cos|` the D4 lines reach: 1/2.
pub const D4_ENTANGLEMENT: f64 = 0.5;

/// Mean and standard deviation of the entanglement of `n` directions drawn uniformly at random in
/// `m` dimensions (Gaussian vectors), over `trials` draws of all `n` (each draw contributes its
/// `n` values), seeded: the level a model whose probes found no structure would show.
pub fn random_entanglement(n: usize, m: usize, trials: usize, seed: u64) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut s, mut s2, mut k) = (0.0, 0.0, 0usize);
    for _ in 0..trials {
        let dirs: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..m).map(|_| std_normal(&mut rng)).collect())
            .collect();
        if let Ok(e) = entanglement(&dirs) {
            for x in e.into_iter().filter(|x| x.is_finite()) {
                s += x;
                s2 += x * x;
                k += 1;
            }
        }
    }
    let mean = s / k as f64;
    (mean, (s2 / k as f64 - mean * mean).max(0.0).sqrt())
}

/// One draw from N(0, 1) (Box–Muller, the cosine branch).
fn std_normal<R: Rng>(rng: &mut R) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random(), rng.random());
    (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The area under the ROC curve of `scores` for labels `y` (0/1): the probability that a random
/// positive scores above a random negative, ties counting one half. NaN without both classes.
pub fn roc_auc(scores: &[f64], y: &[u8]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // mid-ranks over ties, then the Mann–Whitney statistic
    let mut rank = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            rank[k] = mid;
        }
        i = j + 1;
    }
    let n_pos = y.iter().filter(|&&v| v == 1).count() as f64;
    let n_neg = y.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let r_pos: f64 = rank
        .iter()
        .zip(y)
        .filter(|(_, &v)| v == 1)
        .map(|(r, _)| r)
        .sum();
    (r_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Probe results of one feature.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FeatureProbe {
    /// The mean of the per-token unit normals (not renormalised); zero when no probe gave one.
    pub direction: Vec<f64>,
    /// Per token (in token order): share of that token's probed positions the probe classifies
    /// right (training accuracy: the probe sees every position), NaN for a token the feature
    /// never shows.
    pub accuracy: Vec<f64>,
    /// Per token: the area under the ROC curve of the probe's logit on those positions (1: the
    /// feature's positions all score above the others; 0.5: chance). With one feature in 12 the
    /// accuracy of a probe that says "no" everywhere is already 11/12; the AUC is not fooled.
    pub auc: Vec<f64>,
}

/// The probed positions of one token: activation rows and the feature each row belongs to.
pub struct TokenRows<'a> {
    /// The token.
    pub token: u32,
    /// `[n, d]` row-major activations.
    pub x: &'a [f64],
    /// `[n]` index of the feature whose sequence each row comes from.
    pub feature: &'a [usize],
}

/// What the probe of (feature `f`, token `t`) is fit against.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Negatives {
    /// The other features' positions that show the same token `t` (so the probe cannot use the
    /// token's own direction).
    SameToken,
    /// Every other position: other features at any token, and `f` itself at other tokens.
    All,
}

/// Fits, for every feature `f < n_features` and every token `t`, a probe whose positives are
/// `f`'s positions showing `t` and whose negatives are chosen by `negatives`, and returns each
/// feature's mean unit normal. Tokens that a feature never shows (or, with
/// [`Negatives::SameToken`], that only it shows) have no probe and do not enter its mean.
pub fn probe_directions(
    rows: &[TokenRows],
    n_features: usize,
    d: usize,
    negatives: Negatives,
    cfg: &LogisticConfig,
) -> Result<Vec<FeatureProbe>> {
    // every row of every token, for `Negatives::All`
    let all_x: Vec<f64> = rows.iter().flat_map(|r| r.x.iter().copied()).collect();
    let all_tf: Vec<(u32, usize)> = rows
        .iter()
        .flat_map(|r| r.feature.iter().map(move |&f| (r.token, f)))
        .collect();
    let mut out = Vec::with_capacity(n_features);
    for f in 0..n_features {
        let mut sum = vec![0.0; d];
        let mut n_probes = 0usize;
        let mut accuracy = Vec::with_capacity(rows.len());
        let mut auc = Vec::with_capacity(rows.len());
        for tr in rows {
            let (x, y): (&[f64], Vec<u8>) = match negatives {
                Negatives::SameToken => {
                    (tr.x, tr.feature.iter().map(|&g| u8::from(g == f)).collect())
                }
                Negatives::All => (
                    &all_x,
                    all_tf
                        .iter()
                        .map(|&(t, g)| u8::from(g == f && t == tr.token))
                        .collect(),
                ),
            };
            let pos = y.iter().filter(|&&v| v == 1).count();
            if pos == 0 || pos == y.len() {
                accuracy.push(f64::NAN);
                auc.push(f64::NAN);
                continue;
            }
            let fit = Logistic::fit(x, &y, d, cfg)
                .map_err(|e| e.context(format!("probe for feature {f} at token {}", tr.token)))?;
            accuracy.push(fit.accuracy(x, &y));
            let logits: Vec<f64> = x.chunks_exact(d).map(|r| fit.logit(r)).collect();
            auc.push(roc_auc(&logits, &y));
            let (w, _) = fit.raw_weights();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 && norm.is_finite() {
                sum.iter_mut().zip(&w).for_each(|(s, x)| *s += x / norm);
                n_probes += 1;
            }
        }
        // no probe found anything (e.g. the embedding, where a token looks the same in every
        // feature): the zero vector, whose entanglement is NaN
        if n_probes > 0 {
            sum.iter_mut().for_each(|s| *s /= n_probes as f64);
        }
        out.push(FeatureProbe {
            direction: sum,
            accuracy,
            auc,
        });
    }
    Ok(out)
}
