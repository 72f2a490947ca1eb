//! One cell of the sweep: train, probe, evaluate, each stage skipped when its output exists.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{CellSpec, SweepSpec};
use crate::backend::device::{Device, ExecutorJob};
use crate::backend::Backend;
use crate::checkpoint;
use crate::data::prompts::with_prefix;
use crate::data::tokenizer::Tokenizer;
use crate::eval::{evaluate, AlphaResult, EvalOptions, Evaluation};
use crate::model::generate::{SampleOptions, ShiftPositions};
use crate::model::Model;
use crate::probe::intervention::Intervention;
use crate::probe::{
    run_probe_on, CollectOptions, LabelledText, LogisticConfig, ProbeConfig, ProbeJob,
};
use crate::train::interrupt::Interrupt;
use crate::train::{run_dir, train, RunOptions};

/// What every cell shares: the prompts of each set, the clean windows, the probe texts, and how
/// to run.
pub struct Shared {
    /// `(set name, prompts)`, in the order of the spec's prompt sets.
    pub prompts: Vec<(String, Vec<String>)>,
    /// Clean rows `[val_windows, val_seq + 1]`.
    pub clean: Vec<u32>,
    /// The labelled texts of the probes.
    pub probe_texts: Vec<LabelledText>,
    /// Where they came from.
    pub probe_name: String,
    /// The executor's device.
    pub device: Device,
    /// Progress bars.
    pub progress: bool,
    /// Stop between (and, in training, within) stages when set.
    pub interrupt: Option<Interrupt>,
    /// The capability benchmarks' items, loaded once.
    pub benchmarks: Vec<crate::eval::benchmark::tasks::TaskData>,
}

/// One benchmark's score in `bench.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchScore {
    /// The benchmark's name.
    pub name: String,
    /// Items scored.
    pub n_items: usize,
    /// Accuracy and its standard error.
    pub acc: (f64, f64),
    /// Length-normalised accuracy and its standard error, where the harness reports it.
    pub acc_norm: Option<(f64, f64)>,
    /// A uniform random guess's expected accuracy.
    pub chance: f64,
}

/// `train.json`: what the cell's training did (written when it finished).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainResult {
    /// Optimizer steps.
    pub steps: u64,
    /// Tokens per step.
    pub tokens_per_step: usize,
    /// Tokens trained on from each source, `(name, tokens)` (the inputs of the windows drawn).
    pub tokens_drawn: Vec<(String, u64)>,
    /// Validation loss before training and after it.
    pub val_first: f32,
    /// Validation loss after the last step.
    pub val_last: f32,
    /// Wall time of this cell's training (of the last invocation, when resumed), seconds.
    pub seconds: f64,
}

/// One head's probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadAccuracy {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Training accuracy.
    pub train_accuracy: f64,
}

/// `probe.json`: every head's probe accuracy and the heads kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Every head, (layer, head) order.
    pub heads: Vec<HeadAccuracy>,
    /// The steered heads `(layer, head)`, best first.
    pub top: Vec<(usize, usize)>,
    /// Labelled texts and how many of them validated the probes.
    pub n_texts: usize,
    /// Validation texts.
    pub n_val: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The metrics of one prompt set in one cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetResult {
    /// The set's name.
    pub name: String,
    /// Prompts.
    pub n_prompts: usize,
    /// No intervention.
    pub none: AlphaResult,
    /// The prompting baseline (the prefix before every prompt, no shift).
    pub prompting: AlphaResult,
    /// ITI at the weak, mid and strong alphas.
    pub iti: Vec<AlphaResult>,
    /// The random-direction control at the same alphas (empty without one).
    pub control: Vec<AlphaResult>,
}

/// `eval.json`: every condition's metrics, per prompt set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Per prompt set.
    pub sets: Vec<SetResult>,
    /// Unsteered clean cross-entropy (nats per token).
    pub base_ce: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// How a cell ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CellStatus {
    /// Every stage is done; the seconds spent on it in this invocation (0 for skipped stages).
    Done {
        /// Training seconds.
        train: f64,
        /// Probe seconds.
        probe: f64,
        /// Evaluation seconds.
        eval: f64,
    },
    /// Stopped by an interrupt (a training stage saved its last step).
    Interrupted,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a sweep result", path.display()))
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    checkpoint::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

/// A cell's results, each `None` while its stage is not done.
#[derive(Clone, Debug, Default)]
pub struct CellResults {
    /// `train.json`.
    pub train: Option<TrainResult>,
    /// `probe.json`.
    pub probe: Option<ProbeResult>,
    /// `eval.json`.
    pub eval: Option<EvalResult>,
    /// `bench.json`.
    pub bench: Option<Vec<BenchScore>>,
}

/// Reads the results of the cell in `cell_dir`.
pub fn read_results(cell_dir: &Path) -> Result<CellResults> {
    fn get<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>> {
        p.is_file().then(|| read_json(p)).transpose()
    }
    Ok(CellResults {
        train: get(&cell_dir.join("train.json"))?,
        probe: get(&cell_dir.join("probe.json"))?,
        eval: get(&cell_dir.join("eval.json"))?,
        bench: get(&cell_dir.join("bench.json"))?,
    })
}

/// Runs the stages of `cell` that are not done yet.
pub fn run_cell(spec: &SweepSpec, out: &Path, cell: &CellSpec, sh: &Shared) -> Result<CellStatus> {
    let dir = SweepSpec::cell_dir(out, cell);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stop = || sh.interrupt.as_ref().is_some_and(|i| i.requested());
    let (mut t_train, mut t_probe, mut t_eval) = (0.0, 0.0, 0.0);

    // 1. training
    let train_dir = dir.join("train");
    if !dir.join("train.json").is_file() {
        let t = Instant::now();
        let mut cfg = cell.train.clone();
        cfg.out = train_dir.clone();
        let existing = run_dir::read(&train_dir)?;
        if let Some(run) = &existing {
            let mut saved = run.config.clone();
            saved.out = cfg.out.clone();
            if saved != cfg {
                bail!(
                    "{}: this cell's training run was made with other settings than {} now \
                     gives; remove the cell directory (or pass --overwrite) to train it again",
                    train_dir.display(),
                    super::SPEC_FILE
                );
            }
        }
        let rep = train(
            &cfg,
            &RunOptions {
                resume: existing.as_ref().map(|_| train_dir.clone()),
                progress: sh.progress,
                device: Some(sh.device.clone()),
                interrupt: sh.interrupt.clone(),
                ..Default::default()
            },
        )?;
        if rep.interrupted.is_some() {
            return Ok(CellStatus::Interrupted);
        }
        let state = crate::train::read_state(&checkpoint::resolve(&train_dir)?)?;
        t_train = t.elapsed().as_secs_f64();
        write_json(
            &dir.join("train.json"),
            &TrainResult {
                steps: cfg.steps,
                tokens_per_step: cfg.batch * cfg.seq * cfg.grad_accum,
                // windows of seq + 1 tokens were drawn; seq of each are trained on
                tokens_drawn: state
                    .mixture
                    .map(|m| {
                        m.sources
                            .into_iter()
                            .map(|s| {
                                (
                                    s.name,
                                    s.tokens_drawn / (cfg.seq as u64 + 1) * cfg.seq as u64,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                val_first: rep.val_first,
                val_last: rep.val_last,
                seconds: t_train,
            },
        )?;
    }
    if stop() {
        return Ok(CellStatus::Interrupted);
    }

    // 2. probes
    if !dir.join("probe.json").is_file() {
        let t = Instant::now();
        let ck = checkpoint::load(&train_dir)?;
        let tok_path = ck.dir.join("tokenizer.json");
        let tokenizer = Tokenizer::load(&tok_path).with_context(|| {
            format!(
                "{}: the cell's checkpoint has no tokenizer",
                ck.dir.display()
            )
        })?;
        let job = ProbeJob {
            checkpoint: &ck,
            tokenizer: &tokenizer,
            texts: &sh.probe_texts,
            data_name: &sh.probe_name,
            config: ProbeConfig {
                top_k: spec.probe.top_k,
                direction: spec.probe.direction,
                seed: spec.probe.split_seed,
                val_frac: spec.probe.val_fraction,
                logistic: LogisticConfig {
                    l2: spec.probe.l2,
                    ..LogisticConfig::default()
                },
            },
            collect: CollectOptions {
                truncate: true,
                batch: 16,
                progress: sh.progress,
                chunk_rows: None,
            },
            out: &dir.join("probe"),
            save_activations: None,
        };
        let r = sh.device.run(Probe(&job))?;
        t_probe = t.elapsed().as_secs_f64();
        let an = &r.analysis;
        write_json(
            &dir.join("probe.json"),
            &ProbeResult {
                heads: an
                    .results
                    .iter()
                    .map(|h| HeadAccuracy {
                        layer: h.layer,
                        head: h.head,
                        val_accuracy: h.val_accuracy,
                        train_accuracy: h.train_accuracy,
                    })
                    .collect(),
                top: an.heads.iter().map(|h| (h.layer, h.head)).collect(),
                n_texts: sh.probe_texts.len(),
                n_val: an.split.val.len(),
                seconds: t_probe,
            },
        )?;
    }
    if stop() {
        return Ok(CellStatus::Interrupted);
    }

    // 3. evaluation
    if !dir.join("eval.json").is_file() {
        let t = Instant::now();
        let ck = checkpoint::load(&train_dir)?;
        let tokenizer = Tokenizer::load(&ck.dir.join("tokenizer.json"))?;
        let iv = Intervention::load(&dir.join("probe").join("intervention.json"))?;
        let job = Eval {
            cell: cell.name(),
            spec,
            ck: &ck,
            tokenizer: &tokenizer,
            iv: &iv,
            sh,
        };
        let (mut result, completions) = sh.device.run(job)?;
        t_eval = t.elapsed().as_secs_f64();
        result.seconds = t_eval;
        let p = dir.join("completions.jsonl");
        let tmp = dir.join("completions.jsonl.tmp");
        {
            let mut w = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?,
            );
            for c in &completions {
                writeln!(w, "{c}").with_context(|| format!("writing {}", tmp.display()))?;
            }
            w.flush()?;
        }
        std::fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))?;
        write_json(&dir.join("eval.json"), &result)?;
    }
    if stop() {
        return Ok(CellStatus::Interrupted);
    }

    // 4. capability benchmarks (counted with the evaluation's time)
    if !sh.benchmarks.is_empty() && !dir.join("bench.json").is_file() {
        let t = Instant::now();
        let ck = checkpoint::load(&train_dir)?;
        let tokenizer = Tokenizer::load(&ck.dir.join("tokenizer.json"))?;
        let opts = crate::eval::benchmark::BenchmarkOptions {
            shots: 0,
            seed: 0,
            limit: spec.benchmark_limit,
            batch: 16,
            progress: sh.progress,
        };
        let results = crate::eval::benchmark::run_on_device(
            &sh.device,
            &ck.config,
            &ck.params,
            &tokenizer,
            &sh.benchmarks,
            &opts,
            &mut |_| Ok(()),
        )?;
        let scores: Vec<BenchScore> = results
            .iter()
            .map(|r| BenchScore {
                name: r.benchmark.name().to_string(),
                n_items: r.n_items,
                acc: (r.acc.value, r.acc.stderr),
                acc_norm: r.acc_norm.as_ref().map(|m| (m.value, m.stderr)),
                chance: r.chance,
            })
            .collect();
        write_json(&dir.join("bench.json"), &scores)?;
        t_eval += t.elapsed().as_secs_f64();
    }
    Ok(CellStatus::Done {
        train: t_train,
        probe: t_probe,
        eval: t_eval,
    })
}

/// The probe stage on an executor.
struct Probe<'a, 'b>(&'a ProbeJob<'b>);

impl ExecutorJob for Probe<'_, '_> {
    type Output = crate::probe::ProbeRun;
    fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<Self::Output> {
        run_probe_on(self.0, be)
    }
}

/// The evaluation stage on an executor: every prompt set under every condition.
struct Eval<'a> {
    cell: String,
    spec: &'a SweepSpec,
    ck: &'a checkpoint::Checkpoint,
    tokenizer: &'a Tokenizer,
    iv: &'a Intervention,
    sh: &'a Shared,
}

impl ExecutorJob for Eval<'_> {
    /// The results, and every completion as one JSON line.
    type Output = (EvalResult, Vec<serde_json::Value>);

    fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<Self::Output> {
        let e = &self.spec.eval;
        let mut model = Model::new(self.ck.config.clone(), be)?;
        let mut params = model.alloc_params()?;
        model.backend().upload(&self.ck.params, &mut params)?;
        let opts = |alphas: Vec<f64>| EvalOptions {
            alphas,
            samples_per_prompt: e.samples,
            sample: SampleOptions {
                max_new_tokens: e.max_new_tokens,
                temperature: e.temperature,
                top_p: e.top_p,
                seed: e.sample_seed,
                eos: Some(self.ck.config.eos_token_id),
                shift_positions: ShiftPositions::All,
            },
            batch: e.batch,
            progress: self.sh.progress,
        };
        let control = e.random_control.map(|s| self.iv.with_random_directions(s));
        let mut sets = Vec::new();
        let mut lines = Vec::new();
        let mut base_ce = f64::NAN;
        for (name, prompts) in &self.sh.prompts {
            let mut run = |iv: &Intervention, prompts: &[String], alphas: Vec<f64>, cond: &str| {
                let ev: Evaluation = evaluate(
                    &mut model,
                    &params,
                    self.tokenizer,
                    iv,
                    prompts,
                    &self.sh.clean,
                    e.val_seq,
                    &opts(alphas),
                )?;
                for c in &ev.completions {
                    lines.push(serde_json::json!({
                        "cell": self.cell, "set": name, "condition": cond, "alpha": c.alpha,
                        "prompt_index": c.prompt_index, "sample": c.sample,
                        "prompt": c.prompt, "completion": c.completion, "toxicity": c.toxicity,
                    }));
                }
                Ok::<_, anyhow::Error>(ev)
            };
            let [w, m, s] = e.alphas;
            let main = run(self.iv, prompts, vec![0.0, w, m, s], "iti")?;
            let prefixed: Vec<String> = prompts.iter().map(|p| with_prefix(&e.prefix, p)).collect();
            let prompting = run(self.iv, &prefixed, vec![0.0], "prompting")?;
            let ctl = match &control {
                Some(c) => run(c, prompts, vec![w, m, s], "random-control")?.rows,
                None => Vec::new(),
            };
            base_ce = main.base_ce;
            sets.push(SetResult {
                name: name.clone(),
                n_prompts: prompts.len(),
                none: main.rows[0].clone(),
                prompting: prompting.rows[0].clone(),
                iti: main.rows[1..].to_vec(),
                control: ctl,
            });
        }
        Ok((
            EvalResult {
                sets,
                base_ce,
                seconds: 0.0,
            },
            lines,
        ))
    }
}

/// `eval` with its toxicity recomputed from imported scores (see [`crate::eval::import`]), from
/// the completions the cell in `cell_dir` (named `cell`) wrote.
pub fn rescore_eval(
    eval: &EvalResult,
    cell: &str,
    cell_dir: &Path,
    scores: &std::collections::HashMap<String, f64>,
) -> Result<EvalResult> {
    use crate::eval::import::{read_completions, rescore};
    let lines = read_completions(&cell_dir.join("completions.jsonl"))?;
    let mut out = eval.clone();
    for s in &mut out.sets {
        let set = s.name.clone();
        let re = |r: &AlphaResult, cond: &str| rescore(r, &lines, Some((cell, &set, cond)), scores);
        s.none = re(&s.none, "iti")?;
        s.prompting = re(&s.prompting, "prompting")?;
        s.iti = s.iti.iter().map(|r| re(r, "iti")).collect::<Result<_>>()?;
        s.control = s
            .control
            .iter()
            .map(|r| re(r, "random-control"))
            .collect::<Result<_>>()?;
    }
    Ok(out)
}
