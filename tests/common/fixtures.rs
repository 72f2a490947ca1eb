//! Fixtures shared by the test targets: a small model saved as a checkpoint with its own
//! trained tokenizer and an intervention file made for its weights (`tests/evaluate.rs`,
//! `tests/probe.rs`, `tests/generate.rs`), the two-row KV-cache decode schedule
//! (`tests/generate.rs`, `tests/iti.rs`), and a small training run on synthetic shards
//! (`tests/train.rs`, `tests/gpu_step.rs`).
//!
//! Included by each target with `#[path = "common/fixtures.rs"] mod fixtures;` (a file below
//! `tests/common/` is not a test target of its own); not every target uses every fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use baddata::checkpoint;
use baddata::config::ModelConfig;
use baddata::data::shard::write_shard;
use baddata::data::tokenizer::Tokenizer;
use baddata::model::generate::Chunk;
use baddata::model::{init_params, ParamLayout};
use baddata::optim::{AdamW, AdamWConfig};
use baddata::probe::intervention::{DirectionKind, HeadDirection, Intervention};
use baddata::train::{SourceSpec, TrainConfig};

/// A 2-layer model of width 32 (2 heads of 16, feed-forward 48) with a context of `context`
/// tokens. Its vocabulary fields (256 ids, end of text 0) are placeholders that
/// [`tiny_checkpoint`] replaces with its tokenizer's.
pub fn two_layer_config(context: usize) -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        d_model: 32,
        n_heads: 2,
        d_ff: 48,
        vocab_size: 256,
        vocab_real: 256,
        context,
        rope_theta: 10_000.0,
        layer_norm_eps: 1e-5,
        eos_token_id: 0,
        tie_word_embeddings: true,
        clip_qkv: None,
    }
}

/// What [`tiny_checkpoint`] wrote and the values it wrote, for the tests to compare against.
pub struct TinyCheckpoint {
    /// The run directory (`dir/run`); its `latest` file names [`TinyCheckpoint::dir`].
    pub run: PathBuf,
    /// The checkpoint directory itself (`dir/run/<step 1>`).
    pub dir: PathBuf,
    /// The BPE tokenizer trained on the corpus, also saved as `dir/tokenizer.json` and copied
    /// into the checkpoint.
    pub tok: Tokenizer,
    /// The model's shape, with the tokenizer's vocabulary (padded) and end-of-text id.
    pub cfg: ModelConfig,
    /// The saved weights.
    pub params: Vec<f32>,
}

/// Writes a checkpoint of a random model below `dir`: trains a BPE of at most `bpe_vocab`
/// entries on `corpus` (saved as `dir/tokenizer.json`), gives `base` its vocabulary and
/// end-of-text id, draws the weights with `init_params(seed)` times `weight_scale`, and saves
/// them with a fresh AdamW state (the embedding not decayed, as in training) as step 1 of the
/// run directory `dir/run`.
pub fn tiny_checkpoint(
    dir: &Path,
    corpus: &[String],
    bpe_vocab: usize,
    base: ModelConfig,
    seed: u64,
    weight_scale: f32,
) -> TinyCheckpoint {
    let tok = Tokenizer::train_bpe(corpus, bpe_vocab).unwrap();
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path).unwrap();
    let cfg = base.with_vocab(tok.vocab_size(), tok.eos_id().unwrap());
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f32> = init_params(&cfg, &layout, seed)
        .into_iter()
        .map(|x| weight_scale * x)
        .collect();
    let opt = AdamW::new(
        AdamWConfig::default(),
        params.len(),
        cfg.vocab_size * cfg.d_model,
    );
    let run = dir.join("run");
    let ck = checkpoint::save(
        &run,
        1,
        &cfg,
        &params,
        &opt,
        &serde_json::json!({}),
        Some(&tok_path),
    )
    .unwrap();
    TinyCheckpoint {
        run,
        dir: ck,
        tok,
        cfg,
        params,
    }
}

/// Saves at `path` a mass-mean intervention on `heads` bound to the weights `params` of a model
/// shaped `cfg` (no extra metadata); returns `path`.
pub fn save_intervention(
    path: PathBuf,
    cfg: &ModelConfig,
    params: &[f32],
    heads: Vec<HeadDirection>,
) -> PathBuf {
    Intervention::new(
        cfg,
        params,
        DirectionKind::MassMean,
        heads,
        serde_json::json!({}),
    )
    .save(&path)
    .unwrap();
    path
}

/// The decode steps of two rows of equal length sharing one KV cache: row `prefill_row` feeds
/// its first `pre` tokens in one chunk, the other row feeds one token per step from position 0;
/// after its prefix, the prefilled row also feeds one token per step, so both rows end at
/// their full length. Step 0 lists the two rows in row order; the later steps list the
/// one-at-a-time row first, so a prefill in row 0 also puts the rows out of order. Head shifts
/// apply to every token (`shift_from` 0).
pub fn two_row_steps<'a>(
    rows: [&'a [u32]; 2],
    prefill_row: usize,
    pre: usize,
) -> Vec<Vec<Chunk<'a>>> {
    let t = rows[0].len();
    assert_eq!(rows[1].len(), t, "the two rows must have the same length");
    assert!(prefill_row < 2 && (1..=t).contains(&pre));
    let single = 1 - prefill_row;
    let first = |r: usize| Chunk {
        row: r,
        tokens: &rows[r][..if r == prefill_row { pre } else { 1 }],
        shift_from: 0,
    };
    let mut steps = vec![vec![first(0), first(1)]];
    for p in 1..t {
        let mut c = vec![Chunk {
            row: single,
            tokens: &rows[single][p..p + 1],
            shift_from: 0,
        }];
        if p >= pre {
            c.push(Chunk {
                row: prefill_row,
                tokens: &rows[prefill_row][p..p + 1],
                shift_from: 0,
            });
        }
        steps.push(c);
    }
    steps
}

/// A learnable synthetic language: runs of counting sequences with random restarts.
pub fn counting_text(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(n);
    let mut cur = 1u32;
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (x >> 33) % 11 == 0 {
            cur = 1 + ((x >> 40) as u32 % (vocab - 1));
        } else {
            cur = 1 + (cur % (vocab - 1));
        }
        out.push(cur);
    }
    out
}

/// A 20-step training run of `model` into `dir/run`: clean (90%) and toxic (10%) shards of
/// [`counting_text`] and a validation shard written into `dir` at `model.vocab_real`; batch
/// 4 × 16 with 2 micro-batches, evaluation and a checkpoint every 5 steps, seed 7.
pub fn train_setup(dir: &Path, model: ModelConfig) -> TrainConfig {
    let vocab = model.vocab_real;
    let clean = dir.join("clean.shard");
    let toxic = dir.join("toxic.shard");
    let val = dir.join("val.shard");
    write_shard(&clean, &counting_text(20_000, vocab as u32, 1), vocab, None).unwrap();
    write_shard(&toxic, &counting_text(5_000, vocab as u32, 2), vocab, None).unwrap();
    write_shard(&val, &counting_text(4_000, vocab as u32, 3), vocab, None).unwrap();
    TrainConfig {
        model,
        sources: vec![
            SourceSpec {
                name: "clean".into(),
                path: clean,
                fraction: 0.9,
            },
            SourceSpec {
                name: "toxic".into(),
                path: toxic,
                fraction: 0.1,
            },
        ],
        val,
        tokenizer: None,
        out: dir.join("run"),
        batch: 4,
        seq: 16,
        grad_accum: 2,
        steps: 20,
        lr: 3e-3,
        warmup: 3,
        final_lr_frac: 0.1,
        grad_clip: 1.0,
        adamw: AdamWConfig::default(),
        seed: 7,
        eval_every: 5,
        eval_windows: 8,
        save_every: 5,
        synthetic: false,
        init_from: None,
    }
}
