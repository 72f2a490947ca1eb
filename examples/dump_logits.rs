//! Writes the logits this engine computes for a checkpoint, for `tools/hf_parity.py` to compare
//! with Hugging Face `OlmoForCausalLM`.
//!
//! Usage: `cargo run --release --example dump_logits -- CHECKPOINT OUT.safetensors [BATCH SEQ]`
//!
//! The ids are drawn with a fixed seed from the model's real vocabulary; the output holds
//! `ids` (I64 `[B, T]`) and `logits` (F32 `[B, T, vocab_size]`), computed in f32 on the CPU.

use std::path::PathBuf;

use anyhow::{Context, Result};
use baddata::backend::cpu::Cpu;
use baddata::checkpoint;
use baddata::model::Model;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 && args.len() != 4 {
        anyhow::bail!("usage: dump_logits CHECKPOINT OUT.safetensors [BATCH SEQ]");
    }
    let ck = checkpoint::load(&PathBuf::from(&args[0]))?;
    let out = PathBuf::from(&args[1]);
    let (batch, seq) = if args.len() == 4 {
        (
            args[2].parse().context("BATCH")?,
            args[3].parse().context("SEQ")?,
        )
    } else {
        (2usize, ck.config.context.min(128))
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2505_04741);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(0..ck.config.vocab_real as u32))
        .collect();
    let mut model = Model::new(ck.config.clone(), Cpu::<f32>::new())?;
    let logits = model.logits(&ck.params, &ids, batch, seq)?;
    let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let tensors = [
        (
            "ids",
            TensorView::new(Dtype::I64, vec![batch, seq], bytemuck::cast_slice(&ids64))?,
        ),
        (
            "logits",
            TensorView::new(
                Dtype::F32,
                vec![batch, seq, ck.config.vocab_size],
                bytemuck::cast_slice(&logits),
            )?,
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} ({batch}×{seq} ids, logits over {} ids) from {}",
        out.display(),
        ck.config.vocab_size,
        ck.dir.display()
    );
    Ok(())
}
