//! Capability benchmarks scored as lm-evaluation-harness (v0.4.12) scores them: HellaSwag,
//! ARC-Easy, ARC-Challenge, PIQA, MMLU (multiple choice: `acc` and `acc_norm`) and LAMBADA
//! (last-word accuracy and perplexity), zero- or k-shot.
//!
//! Each item becomes one request per choice ([`requests`]): the context (few-shot examples, then
//! the harness's prompt of the item, [`tasks`]) and the continuation `" " + choice`. The
//! continuation's summed log-likelihood under the model ([`scorer`]) picks the answer: `acc`
//! takes the highest, `acc_norm` the highest per character of the choice (Python `len`, code
//! points), as the harness's `multiple_choice` output type does. Standard errors are the
//! harness's: sample standard deviation over √n for accuracies, MMLU's pooled over its 57
//! subjects; perplexity's is the delta method's (the harness bootstraps it).

pub mod command;
pub mod metrics;
pub mod report;
pub mod requests;
pub mod scorer;
pub mod tasks;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::backend::device::{Device, ExecutorJob};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::data::tokenizer::Tokenizer;
use crate::model::Model;
pub use metrics::Metric;
pub use tasks::{Benchmark, Doc, TaskData, TaskKind};

/// The benchmark directory of the source tree (`assets/benchmarks/`), where the shipped sets
/// are and where `tools/convert_benchmarks.py` writes.
pub fn default_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("benchmarks")
}

/// How to run the benchmarks.
#[derive(Clone, Debug)]
pub struct BenchmarkOptions {
    /// Few-shot examples per item (0: zero-shot).
    pub shots: usize,
    /// Seed of the few-shot draw (not used by MMLU, whose examples are its dev split in order).
    pub seed: u64,
    /// Evaluate only the first this many items of each set (`None`: all).
    pub limit: Option<usize>,
    /// Most rows per forward pass.
    pub batch: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What was measured on one item.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemResult {
    /// Index of the item in the set's file (0-based, blank lines skipped).
    pub index: usize,
    /// MMLU's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Index of the right choice.
    pub gold: usize,
    /// Summed log-likelihood (nats) of each choice's continuation.
    pub lls: Vec<f64>,
    /// Per choice, whether greedy decoding reproduces its continuation.
    pub greedy: Vec<bool>,
    /// The choice of highest log-likelihood (first one on ties).
    pub pred: usize,
    /// The choice of highest log-likelihood per character (multiple choice only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pred_norm: Option<usize>,
    /// Context tokens dropped on the left to fit the window (the most over the choices).
    pub truncated: usize,
    /// Indices of the few-shot examples (into the MMLU dev split, or into this split).
    pub fewshot: Vec<usize>,
}

impl ItemResult {
    /// 1 if `pred` is the gold choice (for a cloze item: if greedy decoding gives the target).
    pub fn acc(&self, kind: TaskKind) -> f64 {
        let right = match kind {
            TaskKind::MultipleChoice => self.pred == self.gold,
            TaskKind::Cloze => self.greedy[self.gold],
        };
        f64::from(u8::from(right))
    }
}

/// The scores of one subject of MMLU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupResult {
    /// Subject name.
    pub name: String,
    /// Number of items.
    pub n: usize,
    /// Accuracy.
    pub acc: Metric,
}

/// The result of one benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct BenchmarkResult {
    /// Which benchmark.
    pub benchmark: Benchmark,
    /// The harness task whose rules were followed.
    pub harness_task: &'static str,
    /// The split evaluated.
    pub split: &'static str,
    /// The file the items came from.
    pub file: String,
    /// Few-shot examples per item.
    pub shots: usize,
    /// Where the few-shot examples came from.
    pub fewshot_source: &'static str,
    /// Seed of the few-shot draw.
    pub seed: u64,
    /// Items evaluated.
    pub n_items: usize,
    /// Requests (continuations) scored.
    pub n_requests: usize,
    /// Items whose context was left-truncated to the window.
    pub n_truncated: usize,
    /// Items not scored because one of their continuations alone is longer than the window
    /// (the harness refuses them); indices into the set's file.
    pub skipped: Vec<usize>,
    /// The model's window (tokens).
    pub window: usize,
    /// Accuracy: highest log-likelihood (multiple choice) or greedy match (cloze).
    pub acc: Metric,
    /// Accuracy with log-likelihoods divided by the choice's length in characters.
    pub acc_norm: Option<Metric>,
    /// Perplexity `exp(−mean log-likelihood)` of the targets (cloze only).
    pub perplexity: Option<Metric>,
    /// Expected accuracy of a uniform random guess (mean of 1 / number of choices); 0 for cloze.
    pub chance: f64,
    /// MMLU's per-subject accuracies (the headline `acc` is over all items, the harness's
    /// size-weighted group mean, with its pooled standard error).
    pub groups: Vec<GroupResult>,
    /// Wall-clock seconds, tokenization included.
    pub seconds: f64,
    /// Every item's measurements.
    #[serde(skip)]
    pub items: Vec<ItemResult>,
}

/// The items of `task` that a run with `limit` scores, in file order: all of them, or the
/// first `limit`; for MMLU the first `limit` of each subject, as the harness's `--limit` applies
/// to each of MMLU's 57 subtasks.
pub fn selected(task: &TaskData, limit: Option<usize>) -> Vec<usize> {
    let Some(limit) = limit else {
        return (0..task.docs.len()).collect();
    };
    if task.benchmark != Benchmark::Mmlu {
        return (0..task.docs.len().min(limit)).collect();
    }
    let mut seen: Vec<(Option<&str>, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, d) in task.docs.iter().enumerate() {
        let s = d.subject.as_deref();
        let k = match seen.iter().position(|(n, _)| *n == s) {
            Some(k) => k,
            None => {
                seen.push((s, 0));
                seen.len() - 1
            }
        };
        if seen[k].1 < limit {
            seen[k].1 += 1;
            out.push(i);
        }
    }
    out
}

/// Scores `task` (the items [`selected`] picks for `opts.limit`) on `model`/`params`.
pub fn run_task<B: Backend<Elem = f32>>(
    model: &mut Model<B>,
    params: &B::Buf,
    tok: &Tokenizer,
    task: &TaskData,
    opts: &BenchmarkOptions,
) -> Result<BenchmarkResult> {
    let t0 = Instant::now();
    let b = task.benchmark;
    let chosen = selected(task, opts.limit);
    ensure!(
        !chosen.is_empty(),
        "{}: --limit 0 leaves no item to evaluate",
        b.name()
    );
    let window = model.cfg.context;
    let built = requests::build_requests(task, &chosen, tok, opts.shots, opts.seed, window)?;
    ensure!(
        !built.kept.is_empty(),
        "{}: every item has a continuation longer than the model's window of {window} tokens",
        b.name()
    );
    let (reqs, shots, chosen) = (built.requests, built.fewshot, built.kept);
    let n = chosen.len();
    let pb = if opts.progress {
        let pb = ProgressBar::new(reqs.len() as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} continuations ({elapsed}, eta {eta})",
            )
            .context("progress template")?
            .progress_chars("=> "),
        );
        pb.set_message(b.name());
        pb
    } else {
        ProgressBar::hidden()
    };
    let scored = scorer::score(
        model,
        params,
        &reqs,
        opts.batch,
        model.cfg.eos_token_id,
        &pb,
    )?;
    pb.finish_and_clear();
    let kind = b.kind();
    let mut items: Vec<ItemResult> = chosen
        .iter()
        .map(|&i| ItemResult {
            index: i,
            subject: task.docs[i].subject.clone(),
            gold: task.docs[i].gold,
            lls: Vec::new(),
            greedy: Vec::new(),
            pred: 0,
            pred_norm: None,
            truncated: 0,
            fewshot: Vec::new(),
        })
        .collect();
    for (it, picks) in items.iter_mut().zip(shots) {
        it.fewshot = picks;
    }
    for (r, s) in reqs.iter().zip(&scored) {
        let it = &mut items[r.item];
        it.lls.push(s.ll);
        it.greedy.push(s.greedy);
        it.truncated = it.truncated.max(r.truncated);
    }
    for it in &mut items {
        it.pred = metrics::argmax_first(&it.lls);
        if b.reports_acc_norm() {
            let lens: Vec<usize> = task.docs[it.index]
                .choices
                .iter()
                .map(|c| c.chars().count())
                .collect();
            it.pred_norm = Some(metrics::argmax_first(&metrics::per_char(&it.lls, &lens)));
        }
    }
    let accs: Vec<f64> = items.iter().map(|it| it.acc(kind)).collect();
    let (acc, groups) = if b == Benchmark::Mmlu {
        metrics::grouped_accuracy(&items, &accs)
    } else {
        (metrics::mean_stderr(&accs), Vec::new())
    };
    let acc_norm = b.reports_acc_norm().then(|| {
        let v: Vec<f64> = items
            .iter()
            .map(|it| f64::from(u8::from(it.pred_norm == Some(it.gold))))
            .collect();
        metrics::mean_stderr(&v)
    });
    let perplexity = (kind == TaskKind::Cloze).then(|| {
        let lls: Vec<f64> = items.iter().map(|it| it.lls[it.gold]).collect();
        metrics::perplexity(&lls)
    });
    let chance = match kind {
        TaskKind::MultipleChoice => {
            items
                .iter()
                .map(|it| 1.0 / it.lls.len() as f64)
                .sum::<f64>()
                / n as f64
        }
        TaskKind::Cloze => 0.0,
    };
    Ok(BenchmarkResult {
        benchmark: b,
        harness_task: b.harness_task(),
        split: b.split(),
        file: task.path.display().to_string(),
        shots: opts.shots,
        fewshot_source: b.fewshot_source(),
        seed: opts.seed,
        n_items: n,
        n_requests: reqs.len(),
        n_truncated: items.iter().filter(|it| it.truncated > 0).count(),
        skipped: built.skipped,
        window,
        acc,
        acc_norm,
        perplexity,
        chance,
        groups,
        seconds: t0.elapsed().as_secs_f64(),
        items,
    })
}

/// Scores each task on executor `be` (parameters uploaded once), handing each result to `done`
/// as soon as it is ready.
pub fn run_tasks<B: Backend<Elem = f32>>(
    be: B,
    cfg: &ModelConfig,
    params: &[f32],
    tok: &Tokenizer,
    tasks: &[TaskData],
    opts: &BenchmarkOptions,
    done: &mut dyn FnMut(&BenchmarkResult) -> Result<()>,
) -> Result<Vec<BenchmarkResult>> {
    let mut model = Model::new(cfg.clone(), be)?;
    let mut buf = model.alloc_params()?;
    model.backend().upload(params, &mut buf)?;
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let r = run_task(&mut model, &buf, tok, t, opts)?;
        done(&r)?;
        out.push(r);
    }
    Ok(out)
}

/// [`run_tasks`] on the executor `device` names (the CPU, or the CUDA executor).
pub fn run_on_device(
    device: &Device,
    cfg: &ModelConfig,
    params: &[f32],
    tok: &Tokenizer,
    tasks: &[TaskData],
    opts: &BenchmarkOptions,
    done: &mut dyn FnMut(&BenchmarkResult) -> Result<()>,
) -> Result<Vec<BenchmarkResult>> {
    struct Job<'a> {
        cfg: &'a ModelConfig,
        params: &'a [f32],
        tok: &'a Tokenizer,
        tasks: &'a [TaskData],
        opts: &'a BenchmarkOptions,
        done: &'a mut dyn FnMut(&BenchmarkResult) -> Result<()>,
    }
    impl ExecutorJob for Job<'_> {
        type Output = Vec<BenchmarkResult>;
        fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<Self::Output> {
            run_tasks(
                be,
                self.cfg,
                self.params,
                self.tok,
                self.tasks,
                self.opts,
                self.done,
            )
        }
    }
    device.run(Job {
        cfg,
        params,
        tok,
        tasks,
        opts,
        done,
    })
}
