//! Log-likelihoods of requests on any executor: requests sorted longest first (as the harness
//! does), packed into batches of equal padded length, one forward pass per batch with
//! [`Model::logits`] (fp32), then per continuation token the log-softmax over every vocabulary
//! column in f64, summed, and the greedy check (the argmax at each position is the token).

use anyhow::{ensure, Result};
use indicatif::ProgressBar;

use super::requests::Request;
use crate::backend::Backend;
use crate::model::Model;

/// Padded sequence lengths are multiples of this (capped at the window), so a run uses few
/// workspace shapes.
pub const SEQ_BUCKET: usize = 16;

/// Most bytes of logits one batch brings back to the host (`rows · seq · vocab · 4`); a batch
/// of long rows of a large vocabulary holds fewer rows than `--batch`.
pub const LOGITS_BUDGET: usize = 1 << 30;

/// The score of one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Summed log-likelihood (nats) of the continuation's tokens.
    pub ll: f64,
    /// Whether greedy decoding reproduces the whole continuation (argmax at every position).
    pub greedy: bool,
}

/// Summed log-probability of `targets` and whether each is its row's argmax, for the logits
/// rows `rows` (`[targets.len(), vocab]`): log-softmax over the whole row in f64, the first
/// maximum taken as the argmax (as `torch.argmax`).
pub fn continuation_score(rows: &[f32], vocab: usize, targets: &[u32]) -> Scored {
    let mut ll = 0.0;
    let mut greedy = true;
    for (row, &t) in rows.chunks_exact(vocab).zip(targets) {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = i;
            }
        }
        let m = row[best] as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        ll += row[t as usize] as f64 - lse;
        greedy &= best == t as usize;
    }
    Scored { ll, greedy }
}

/// The padded length of a batch whose longest input has `len` tokens.
pub fn padded_len(len: usize, window: usize) -> usize {
    len.div_ceil(SEQ_BUCKET)
        .max(1)
        .saturating_mul(SEQ_BUCKET)
        .min(window)
}

/// Scores every request on `model`/`params` (the model's current head shifts apply), at most
/// `batch` rows per forward pass; the result is in request order. Advances `pb` by one per
/// request. Padding (with `pad`, after each row's tokens) cannot change a row's scores: the
/// model is causal.
pub fn score<B: Backend<Elem = f32>>(
    model: &mut Model<B>,
    params: &B::Buf,
    requests: &[Request],
    batch: usize,
    pad: u32,
    pb: &ProgressBar,
) -> Result<Vec<Scored>> {
    ensure!(batch > 0, "batch must be at least 1");
    let window = model.cfg.context;
    let vocab = model.cfg.vocab_size;
    for r in requests {
        ensure!(
            !r.input.is_empty() && r.input.len() <= window && r.continuation.len() <= r.input.len(),
            "request of item {} choice {}: {} input tokens for {} continuation tokens do not fit the window of {window}",
            r.doc,
            r.choice,
            r.input.len(),
            r.continuation.len()
        );
    }
    // longest first; ties in request order, so the batches are the same on every run
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(requests[i].input.len()));
    let mut out = vec![
        Scored {
            ll: 0.0,
            greedy: false
        };
        requests.len()
    ];
    let mut start = 0;
    while start < order.len() {
        let seq = padded_len(requests[order[start]].input.len(), window);
        let fit = (LOGITS_BUDGET / (seq * vocab * 4)).max(1);
        let rows = batch.min(fit).min(order.len() - start);
        let chunk = &order[start..start + rows];
        let mut ids = Vec::with_capacity(rows * seq);
        for &i in chunk {
            let inp = &requests[i].input;
            ids.extend_from_slice(inp);
            ids.extend(std::iter::repeat(pad).take(seq - inp.len()));
        }
        let logits = model.logits(params, &ids, rows, seq)?;
        for (k, &i) in chunk.iter().enumerate() {
            let r = &requests[i];
            let (len, c) = (r.input.len(), r.continuation.len());
            let from = (k * seq + len - c) * vocab;
            out[i] = continuation_score(&logits[from..from + c * vocab], vocab, &r.continuation);
        }
        pb.inc(rows as u64);
        start += rows;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_score() {
        // two positions over a vocabulary of 3
        let rows = [0.0f32, 1.0, 2.0, 3.0, 3.0, 0.0];
        let lse0 = (1.0f64 + 1f64.exp() + 2f64.exp()).ln();
        let lse1 = (2.0 * 3f64.exp() + 1.0).ln();
        let s = continuation_score(&rows, 3, &[2, 0]);
        approx::assert_abs_diff_eq!(s.ll, ((2.0 - lse0) + (3.0 - lse1)), epsilon = 1e-12);
        // position 1 ties at columns 0 and 1: the first is the argmax, as torch.argmax
        assert!(s.greedy);
        assert!(!continuation_score(&rows, 3, &[2, 1]).greedy);
        assert!(!continuation_score(&rows, 3, &[1, 0]).greedy);
    }

    #[test]
    fn padded_lengths() {
        assert_eq!(padded_len(1, 256), 16);
        assert_eq!(padded_len(16, 256), 16);
        assert_eq!(padded_len(17, 256), 32);
        assert_eq!(padded_len(250, 256), 256);
        assert_eq!(padded_len(20, 24), 24);
    }
}
