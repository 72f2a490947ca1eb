//! Writes the small model the benchmark tests score (`tests/fixtures/benchmark/model/`): a
//! 384-id byte-level BPE trained on the fixture benchmark files, and a random 2-layer OLMo of
//! width 32 and window 128 over it (weights `init_params` with seed 11, times 1.5 so that its
//! next-token distributions are far from uniform).
//!
//! Usage: `cargo run --release --example benchmark_fixture -- OUT_DIR` (then rerun
//! `tools/benchmark_fixture.sh` to record the reference scores for the new model).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baddata::checkpoint::{save_model_safetensors, write_atomic};
use baddata::config::ModelConfig;
use baddata::data::tokenizer::Tokenizer;
use baddata::model::{init_params, ParamLayout};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 1 {
        bail!("usage: benchmark_fixture OUT_DIR");
    }
    let out = PathBuf::from(&args[0]);
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/benchmark");
    let mut corpus = Vec::new();
    for stem in [
        "hellaswag",
        "arc_easy",
        "arc_challenge",
        "piqa",
        "mmlu",
        "mmlu_dev",
        "lambada_openai",
    ] {
        let p = fixtures.join(format!("{stem}.jsonl"));
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        corpus.extend(text.lines().map(String::from));
    }
    let tok = Tokenizer::train_bpe(&corpus, 384)?;
    let cfg = ModelConfig {
        n_layers: 2,
        d_model: 32,
        n_heads: 2,
        d_ff: 64,
        vocab_size: 256,
        vocab_real: 256,
        context: 128,
        rope_theta: 10_000.0,
        layer_norm_eps: 1e-5,
        eos_token_id: 0,
        tie_word_embeddings: true,
        clip_qkv: None,
    }
    .with_vocab(tok.vocab_size(), tok.eos_id()?);
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f32> = init_params(&cfg, &layout, 11)
        .into_iter()
        .map(|x| 1.5 * x)
        .collect();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    save_model_safetensors(&out.join("model.safetensors"), &layout, &params)?;
    write_atomic(
        &out.join("config.json"),
        (serde_json::to_string_pretty(&cfg.to_hf_config())? + "\n").as_bytes(),
    )?;
    tok.save(&out.join("tokenizer.json"))?;
    eprintln!(
        "wrote {} ({} parameters, {} token ids)",
        out.display(),
        params.len(),
        tok.vocab_size()
    );
    Ok(())
}
