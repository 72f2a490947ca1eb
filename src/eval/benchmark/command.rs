//! `evaluate --benchmark`: load the sets and the checkpoint, score on the chosen executor,
//! write the reports and print the table.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::{report, run_on_device, tasks, Benchmark, BenchmarkOptions, BenchmarkResult};
use crate::backend::device::{Device, DeviceArg};
use crate::checkpoint;
use crate::data::tokenizer::{check_fits, Tokenizer};

/// What `evaluate --benchmark` was asked to do.
#[derive(Clone, Debug)]
pub struct Command {
    /// Checkpoint directory, or run directory (its `latest`).
    pub checkpoint: PathBuf,
    /// Benchmark names as given (`all` allowed).
    pub names: Vec<String>,
    /// Directory of the benchmark files (`None`: [`super::default_dir`]).
    pub dir: Option<PathBuf>,
    /// Few-shot examples per item.
    pub shots: usize,
    /// Seed of the few-shot draw.
    pub seed: u64,
    /// Only the first N items of each set (of each subject for MMLU).
    pub limit: Option<usize>,
    /// Most rows per forward pass.
    pub batch: usize,
    /// Output directory (`None`: `CHECKPOINT/benchmarks`).
    pub out: Option<PathBuf>,
    /// Draw progress bars.
    pub progress: bool,
    /// Where to run.
    pub device: DeviceArg,
}

/// Runs the command: every file is read and checked before the model runs; each benchmark's
/// files are written as soon as it ends, the run's table at the end.
pub fn run(cmd: &Command) -> Result<()> {
    let names = Benchmark::parse_list(&cmd.names)?;
    let dir = cmd.dir.clone().unwrap_or_else(super::default_dir);
    let tasks = names
        .iter()
        .map(|&b| tasks::load(b, &dir, cmd.shots > 0))
        .collect::<Result<Vec<_>>>()?;
    let device = Device::select(cmd.device)?;
    let ck = checkpoint::load(&cmd.checkpoint)
        .with_context(|| format!("loading checkpoint {}", cmd.checkpoint.display()))?;
    let tok_path = ck.dir.join("tokenizer.json");
    if !tok_path.is_file() {
        bail!("{} has no tokenizer.json", ck.dir.display());
    }
    let tok = Tokenizer::load(&tok_path)?;
    check_fits(tok.vocab_size(), ck.config.vocab_size, &tok_path)?;
    let opts = BenchmarkOptions {
        shots: cmd.shots,
        seed: cmd.seed,
        limit: cmd.limit,
        batch: cmd.batch,
        progress: cmd.progress,
    };
    let out = cmd.out.clone().unwrap_or_else(|| ck.dir.join("benchmarks"));
    let meta = serde_json::json!({
        "checkpoint": ck.dir.display().to_string(),
        "device": device.describe(),
        "rules": "lm-evaluation-harness v0.4.12 task definitions",
        "batch": cmd.batch,
        "limit": cmd.limit,
    });
    eprintln!(
        "evaluate: {} benchmark(s) on {} ({}), {}-shot, window {} tokens",
        names.len(),
        ck.dir.display(),
        device.describe(),
        cmd.shots,
        ck.config.context
    );
    let mut done = |r: &BenchmarkResult| -> Result<()> {
        report::write_benchmark(&out, r, &meta)?;
        eprintln!("{}", report::summary_line(r));
        if r.n_truncated > 0 {
            eprintln!(
                "note: {}: {} of {} items had their context left-truncated to the model's \
                 window of {} tokens (the harness does the same)",
                r.benchmark.name(),
                r.n_truncated,
                r.n_items,
                r.window
            );
        }
        if !r.skipped.is_empty() {
            eprintln!(
                "note: {}: {} item(s) not scored: a continuation alone is longer than the \
                 model's window of {} tokens (the harness refuses such items): {:?}",
                r.benchmark.name(),
                r.skipped.len(),
                r.window,
                r.skipped
            );
        }
        Ok(())
    };
    let results = run_on_device(
        &device, &ck.config, &ck.params, &tok, &tasks, &opts, &mut done,
    )?;
    let limit = cmd.limit.map_or(String::new(), |n| {
        format!("; the first {n} items of each set (MMLU: of each subject)")
    });
    let description = format!(
        "# Benchmarks\n\n- checkpoint: `{}`, on {}\n- scored as lm-evaluation-harness v0.4.12 \
         scores them; {}-shot, few-shot seed {}{limit}\n- contexts longer than the {}-token \
         window are left-truncated; acc ± standard error (sample sd / √n; MMLU pooled over \
         its subjects)",
        ck.dir.display(),
        device.describe(),
        cmd.shots,
        cmd.seed,
        ck.config.context
    );
    report::write_summary(&out, &results, &meta, &description)?;
    eprint!("\n{}", report::markdown_table(&results));
    eprintln!("evaluate: wrote {}", out.display());
    Ok(())
}
