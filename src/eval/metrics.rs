//! Language-modelling metrics on clean held-out text under an ITI shift: cross-entropy and
//! KL(base ‖ steered) of the next-token distributions, on any executor (logits come back to the
//! host as f32; the KL is summed there in f64).

use anyhow::{ensure, Result};

use crate::backend::Backend;
use crate::model::Model;

/// Sets the head shift of every layer (`None` clears that layer's shift).
pub fn apply_shifts<B: Backend<Elem = f32>>(
    model: &mut Model<B>,
    shifts: &[Option<Vec<f32>>],
) -> Result<()> {
    ensure!(
        shifts.len() == model.cfg.n_layers,
        "{} layer shifts for a model of {} layers",
        shifts.len(),
        model.cfg.n_layers
    );
    for (l, s) in shifts.iter().enumerate() {
        model.set_head_shift(l, s.as_deref())?;
    }
    Ok(())
}

/// Mean cross-entropy (nats per token) over `n_rows` rows of `seq + 1` ids (`rows` is
/// `[n_rows, seq + 1]` row-major; inputs `row[..seq]`, targets `row[1..]`), computed `batch` rows at
/// a time with [`Model::loss`]; the model's current head shifts apply at every position.
pub fn cross_entropy<B: Backend>(
    model: &mut Model<B>,
    params: &B::Buf,
    rows: &[u32],
    seq: usize,
    batch: usize,
) -> Result<f64> {
    let w = seq + 1;
    ensure!(
        batch > 0 && !rows.is_empty() && rows.len() % w == 0,
        "cross_entropy: {} ids are not whole rows of seq + 1 = {w}",
        rows.len()
    );
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in rows.chunks(batch * w) {
        let b = chunk.len() / w;
        sum += model.loss(params, chunk, b, seq)? * (b * seq) as f64;
        n += b * seq;
    }
    Ok(sum / n as f64)
}

/// Logits `[n_rows, seq, vocab_size]` (all vocab rows, padding included) for the inputs
/// `row[..seq]` of each row of `rows` (`[n_rows, seq + 1]`), `batch` rows at a time; the model's
/// current head shifts apply.
pub fn logits<B: Backend>(
    model: &mut Model<B>,
    params: &B::Buf,
    rows: &[u32],
    seq: usize,
    batch: usize,
) -> Result<Vec<f32>> {
    let w = seq + 1;
    ensure!(
        batch > 0 && !rows.is_empty() && rows.len() % w == 0,
        "logits: {} ids are not whole rows of seq + 1 = {w}",
        rows.len()
    );
    let mut out = Vec::new();
    for chunk in rows.chunks(batch * w) {
        let b = chunk.len() / w;
        let ids: Vec<u32> = chunk
            .chunks_exact(w)
            .flat_map(|r| &r[..seq])
            .copied()
            .collect();
        out.extend(model.logits(params, &ids, b, seq)?);
    }
    Ok(out)
}

/// `log_softmax(x)` in f64 over a whole logits row.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Mean over positions of `KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)`, where `p = softmax(base)` and
/// `q = softmax(steered)` row by row. Both are `[positions, vocab]` row-major logits; the softmax
/// runs over every column given (padded vocab rows included, as the model computes them), in
/// f64.
pub fn mean_kl(base: &[f32], steered: &[f32], vocab: usize) -> Result<f64> {
    ensure!(
        vocab > 0 && base.len() == steered.len() && !base.is_empty() && base.len() % vocab == 0,
        "mean_kl: {} base and {} steered logits are not matching rows of {vocab}",
        base.len(),
        steered.len()
    );
    let rows = base.len() / vocab;
    let mut total = 0.0;
    for (b, s) in base.chunks_exact(vocab).zip(steered.chunks_exact(vocab)) {
        let (lp, lq) = (log_softmax(b), log_softmax(s));
        total += lp
            .iter()
            .zip(&lq)
            .map(|(&p, &q)| p.exp() * (p - q))
            .sum::<f64>();
    }
    Ok(total / rows as f64)
}
