//! From items to token requests, as lm-evaluation-harness builds them: the few-shot context, the
//! (context, continuation) string pairs, their tokenization and the left truncation to the
//! model's window.
//!
//! - Context: `description + Σ (shot.query + " " + shot.answer + "\n\n") + doc.query`
//!   (`fewshot_context` with target delimiter `" "` and few-shot delimiter `"\n\n"`; only MMLU
//!   has a description).
//! - Continuation: `" " + choice` for multiple choice; the target (`" " + last word`) for cloze.
//! - Tokens (`_encode_pair`): trailing whitespace of the context moves to the continuation; the
//!   continuation's tokens are those of `encode(context + continuation)` after the first
//!   `len(encode(context))` tokens. No special tokens are added.
//! - Window: the model reads the last `window + 1` tokens of context + continuation minus the
//!   final one, so a context too long for the window loses its beginning; the continuation's
//!   log-likelihood is read off the last `len(continuation)` positions.

use anyhow::{ensure, Context, Result};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::tasks::{mmlu_description, py_isspace, Benchmark, Doc, TaskData, TaskKind};
use crate::data::tokenizer::Tokenizer;

/// The context string of item `index` of `task` with `shots` few-shot examples, and the indices
/// of the examples used (into `task.fewshot` for MMLU, into `task.docs` otherwise).
///
/// MMLU takes the first `shots` dev questions of the item's subject (the harness's `first_n`).
/// The others draw `shots` distinct other items of the same split from a ChaCha20 stream
/// seeded with `seed` and numbered by `index`, so an item's examples do not depend on which
/// other items run, on the batch or on the order.
pub fn fewshot_context(
    task: &TaskData,
    index: usize,
    shots: usize,
    seed: u64,
) -> Result<(String, Vec<usize>)> {
    let doc = &task.docs[index];
    let mut ctx = String::new();
    if task.benchmark == Benchmark::Mmlu {
        let subject = doc.subject.as_deref().unwrap_or_default();
        ctx += &mmlu_description(subject);
    }
    let picks: Vec<usize> = if shots == 0 {
        Vec::new()
    } else if task.benchmark == Benchmark::Mmlu {
        let subject = doc.subject.as_deref();
        let same: Vec<usize> = (0..task.fewshot.len())
            .filter(|&i| task.fewshot[i].subject.as_deref() == subject)
            .take(shots)
            .collect();
        ensure!(
            same.len() == shots,
            "mmlu: {shots} few-shot examples asked for, but the dev split has {} for subject {:?}",
            same.len(),
            subject.unwrap_or_default()
        );
        same
    } else {
        let n = task.docs.len();
        ensure!(
            shots < n,
            "{}: {shots} few-shot examples asked for, but the split has only {} other items",
            task.benchmark.name(),
            n - 1
        );
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        // draw from the n − 1 other items, then skip over the item itself
        sample(&mut rng, n - 1, shots)
            .into_iter()
            .map(|j| if j >= index { j + 1 } else { j })
            .collect()
    };
    let pool = if task.benchmark == Benchmark::Mmlu {
        &task.fewshot
    } else {
        &task.docs
    };
    for &j in &picks {
        let shot = &pool[j];
        ctx += &shot.query;
        ctx += " ";
        ctx += shot.answer();
        ctx += "\n\n";
    }
    ctx += &doc.query;
    Ok((ctx, picks))
}

/// The continuation strings scored after the context of `doc`.
pub fn continuations(kind: TaskKind, doc: &Doc) -> Vec<String> {
    match kind {
        TaskKind::MultipleChoice => doc.choices.iter().map(|c| format!(" {c}")).collect(),
        TaskKind::Cloze => doc.choices.clone(),
    }
}

/// The harness's `_encode_pair`: moves the context's trailing whitespace to the continuation,
/// then returns `(encode(context), encode(context + continuation)[len(encode(context)):])`.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(py_isspace);
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = tok.encode(&format!("{trimmed}{continuation}"))?;
    let ctx = tok.encode(trimmed)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// One scored continuation, tokenized and cut to the model's window.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The item it belongs to (index into the task's docs).
    pub doc: usize,
    /// Its position among the items scored (index into the list given to [`build_requests`]).
    pub item: usize,
    /// Which choice (0 for a cloze item).
    pub choice: usize,
    /// The model's input: `(context + continuation)[-(window + 1):][:-1]`.
    pub input: Vec<u32>,
    /// The continuation's tokens; the last `continuation.len()` positions of `input` predict
    /// them.
    pub continuation: Vec<u32>,
    /// Context tokens dropped from the left to fit the window.
    pub truncated: usize,
}

/// Builds the request of one (context, continuation) pair for a model of `window` positions;
/// `None` when the continuation alone has more than `window` tokens (the harness refuses such a
/// request; the caller skips the item). Errors if the continuation encodes to no token.
pub fn request(
    tok: &Tokenizer,
    doc: usize,
    choice: usize,
    context: &str,
    continuation: &str,
    window: usize,
) -> Result<Option<Request>> {
    ensure!(
        !context.is_empty(),
        "item {doc}: empty context (every benchmark item here has a question)"
    );
    let (ctx, cont) = encode_pair(tok, context, continuation)?;
    ensure!(
        !cont.is_empty(),
        "item {doc}, choice {choice}: the continuation {continuation:?} encodes to no token after the context"
    );
    if cont.len() > window {
        return Ok(None);
    }
    let mut all = ctx;
    all.extend_from_slice(&cont);
    let keep = all.len().min(window + 1);
    let truncated = all.len() - keep;
    let mut input = all[truncated..].to_vec();
    input.pop();
    Ok(Some(Request {
        doc,
        item: 0,
        choice,
        input,
        continuation: cont,
        truncated,
    }))
}

/// The requests of a run, and what became of each item given.
#[derive(Clone, Debug, PartialEq)]
pub struct Requests {
    /// The requests of the items kept, item by item, each item's choices in order;
    /// [`Request::item`] indexes `kept`.
    pub requests: Vec<Request>,
    /// The items scored (indices into the task's docs), in the order given.
    pub kept: Vec<usize>,
    /// Per kept item, the indices of its few-shot examples.
    pub fewshot: Vec<Vec<usize>>,
    /// Items skipped because a continuation alone is longer than the window.
    pub skipped: Vec<usize>,
}

/// Every request of the items `items` of `task` (in the order given), with each item's
/// few-shot examples; an item one of whose continuations does not fit the window is skipped.
pub fn build_requests(
    task: &TaskData,
    items: &[usize],
    tok: &Tokenizer,
    shots: usize,
    seed: u64,
    window: usize,
) -> Result<Requests> {
    let kind = task.benchmark.kind();
    let mut out = Requests {
        requests: Vec::new(),
        kept: Vec::new(),
        fewshot: Vec::new(),
        skipped: Vec::new(),
    };
    for &i in items {
        let (ctx, picks) = fewshot_context(task, i, shots, seed)?;
        let mut reqs = Vec::new();
        for (c, cont) in continuations(kind, &task.docs[i]).iter().enumerate() {
            let r = request(tok, i, c, &ctx, cont, window)
                .with_context(|| format!("{} ({})", task.benchmark.name(), task.path.display()))?;
            reqs.push(r);
        }
        match reqs.into_iter().collect::<Option<Vec<Request>>>() {
            Some(mut reqs) => {
                for r in &mut reqs {
                    r.item = out.kept.len();
                }
                out.requests.extend(reqs);
                out.kept.push(i);
                out.fewshot.push(picks);
            }
            None => out.skipped.push(i),
        }
    }
    Ok(out)
}
