//! The benchmark sets and their lm-evaluation-harness formatting: reading a set's JSONL file
//! into [`Doc`]s (the query text, the answer choices and the gold index), as the harness's task
//! definitions (v0.4.12) render them.
//!
//! | set | harness task | query | choices |
//! |---|---|---|---|
//! | HellaSwag | `hellaswag` | `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())` | `preprocess(ending)` each |
//! | ARC | `arc_easy`, `arc_challenge` | `"Question: {question}\nAnswer:"` | `choices.text` |
//! | PIQA | `piqa` | `"Question: {goal}\nAnswer:"` | `[sol1, sol2]` |
//! | MMLU | `mmlu_{subject}` | `"{question.strip()}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:"`, after the subject header | `["A", "B", "C", "D"]` |
//! | LAMBADA | `lambada_openai` | the text up to its last space | the last word, with its space |
//!
//! `preprocess` is HellaSwag's: strip, `" [title]"` → `". "`, drop every `[...]`, `"  "` → `" "`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::data::text::open_maybe_gz;

/// A benchmark `evaluate --benchmark` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Benchmark {
    /// HellaSwag (Zellers et al. 2019), validation split, 10,042 items, 4 endings each.
    Hellaswag,
    /// ARC-Easy (Clark et al. 2018), validation split, 570 items.
    ArcEasy,
    /// ARC-Challenge, validation split, 299 items.
    ArcChallenge,
    /// PIQA (Bisk et al. 2020), validation split, 1,838 items; not shipped (see assets/SOURCES.md).
    Piqa,
    /// MMLU (Hendrycks et al. 2021), test split, 14,042 items over 57 subjects.
    Mmlu,
    /// LAMBADA, OpenAI's version of the test set, 5,153 passages: last-word accuracy and perplexity.
    Lambada,
}

/// How a benchmark is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// The harness's `multiple_choice`: each choice scored as `" " + choice` after the context;
    /// `acc` (highest log-likelihood) and `acc_norm` (highest log-likelihood per character).
    MultipleChoice,
    /// The harness's `loglikelihood`: one continuation; `acc` = the greedy decode reproduces it,
    /// and perplexity `exp(−mean log-likelihood)`.
    Cloze,
}

impl Benchmark {
    /// Every benchmark, in the order `all` runs them.
    pub const ALL: [Benchmark; 6] = [
        Benchmark::Hellaswag,
        Benchmark::ArcEasy,
        Benchmark::ArcChallenge,
        Benchmark::Piqa,
        Benchmark::Mmlu,
        Benchmark::Lambada,
    ];

    /// The name on the command line and in result files (the harness's task name, except
    /// `lambada` for `lambada_openai`).
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Hellaswag => "hellaswag",
            Benchmark::ArcEasy => "arc_easy",
            Benchmark::ArcChallenge => "arc_challenge",
            Benchmark::Piqa => "piqa",
            Benchmark::Mmlu => "mmlu",
            Benchmark::Lambada => "lambada",
        }
    }

    /// The lm-evaluation-harness task (or group) whose rules this follows.
    pub fn harness_task(self) -> &'static str {
        match self {
            Benchmark::Lambada => "lambada_openai",
            b => b.name(),
        }
    }

    /// Parses benchmark names (`all` stands for every benchmark, in [`Benchmark::ALL`]'s order);
    /// a name given twice runs once.
    pub fn parse_list(names: &[String]) -> Result<Vec<Benchmark>> {
        let mut out = Vec::new();
        for n in names {
            let n = n.trim();
            let found: Vec<Benchmark> = if n == "all" {
                Benchmark::ALL.to_vec()
            } else {
                let b = Benchmark::ALL
                    .into_iter()
                    .find(|b| b.name() == n)
                    .with_context(|| {
                        format!(
                            "unknown benchmark {n:?}: expected all or one of {}",
                            Benchmark::ALL.map(|b| b.name()).join(", ")
                        )
                    })?;
                vec![b]
            };
            for b in found {
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        Ok(out)
    }

    /// Whether the harness reports `acc_norm` for this task (MMLU's choices are single
    /// letters, and its task reports `acc` alone).
    pub fn reports_acc_norm(self) -> bool {
        self.kind() == TaskKind::MultipleChoice && self != Benchmark::Mmlu
    }

    /// Scoring rule.
    pub fn kind(self) -> TaskKind {
        match self {
            Benchmark::Lambada => TaskKind::Cloze,
            _ => TaskKind::MultipleChoice,
        }
    }

    /// File stem of the items in the benchmark directory (`STEM.jsonl.gz` or `STEM.jsonl`).
    pub fn file_stem(self) -> &'static str {
        match self {
            Benchmark::Lambada => "lambada_openai",
            b => b.name(),
        }
    }

    /// The split the shipped file holds, for reports.
    pub fn split(self) -> &'static str {
        match self {
            Benchmark::Mmlu | Benchmark::Lambada => "test",
            _ => "validation",
        }
    }

    /// Where few-shot examples come from, for reports.
    pub fn fewshot_source(self) -> &'static str {
        match self {
            Benchmark::Mmlu => "the first k dev-split questions of the item's subject (the harness's first_n sampler)",
            _ => "k other items of the same split drawn with --seed (the harness draws from the train split, not shipped here)",
        }
    }

    /// The fields a row of the benchmark's file must have, for error messages.
    fn row_fields(self) -> &'static str {
        match self {
            Benchmark::Hellaswag => {
                r#"{"activity_label", "ctx_a", "ctx_b", "endings": [4 strings], "label": "0".."3"}"#
            }
            Benchmark::ArcEasy | Benchmark::ArcChallenge => {
                r#"{"question", "choices": {"text": [...], "label": [...]}, "answerKey"}"#
            }
            Benchmark::Piqa => r#"{"goal", "sol1", "sol2", "label": 0 or 1}"#,
            Benchmark::Mmlu => r#"{"subject", "question", "choices": [4 strings], "answer": 0..3}"#,
            Benchmark::Lambada => r#"{"text"}"#,
        }
    }
}

/// One benchmark item as the harness renders it.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// The harness's `doc_to_text`: the question part of the prompt.
    pub query: String,
    /// Multiple choice: the harness's `doc_to_choice` (scored as `" " + choice`). Cloze: the one
    /// target, its leading space included (`doc_to_target`).
    pub choices: Vec<String>,
    /// Index of the right choice (0 for a cloze item).
    pub gold: usize,
    /// MMLU's subject (`high_school_biology`, ...); `None` elsewhere.
    pub subject: Option<String>,
}

impl Doc {
    /// What a few-shot example puts after its query and the target delimiter `" "`: the gold
    /// choice (for a cloze item its target, leading space included, as the harness does).
    pub fn answer(&self) -> &str {
        &self.choices[self.gold]
    }
}

/// A benchmark's items and, for MMLU, its few-shot (dev) items.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// Which benchmark.
    pub benchmark: Benchmark,
    /// The evaluated items, in file order.
    pub docs: Vec<Doc>,
    /// MMLU's dev items (the few-shot pool); empty for the others, which draw from `docs`.
    pub fewshot: Vec<Doc>,
    /// The file the items came from.
    pub path: PathBuf,
}

/// MMLU's description line for a subject: `"The following are multiple choice questions (with
/// answers) about {subject with spaces}.\n\n"`, as in the harness's `mmlu_{subject}.yaml`.
pub fn mmlu_description(subject: &str) -> String {
    format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    )
}

/// Python's `str.isspace` for one character: Unicode White_Space plus the four information
/// separators U+001C..U+001F, which Python also counts as whitespace.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased. (Python
/// title-cases the first character; the two differ only for the four Latin digraph letters
/// such as U+01C6, which the benchmark texts do not use.)
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// HellaSwag's `preprocess` in the harness (`lm_eval/tasks/hellaswag/utils.py`): strip, turn
/// `" [title]"` into `". "`, remove every bracketed span (non-greedy, not across lines), then
/// replace each double space with one (a single left-to-right pass, as Python's `replace`).
pub fn hellaswag_preprocess(text: &str) -> String {
    static BRACKETS: OnceLock<regex::Regex> = OnceLock::new();
    let re = BRACKETS.get_or_init(|| regex::Regex::new(r"\[.*?\]").expect("valid regex"));
    let t = py_strip(text).replace(" [title]", ". ");
    re.replace_all(&t, "").replace("  ", " ")
}

#[derive(Deserialize)]
struct HellaswagRow {
    activity_label: String,
    ctx_a: String,
    ctx_b: String,
    endings: Vec<String>,
    label: String,
}

#[derive(Deserialize)]
struct ArcChoices {
    text: Vec<String>,
    label: Vec<String>,
}

#[derive(Deserialize)]
struct ArcRow {
    question: String,
    choices: ArcChoices,
    #[serde(rename = "answerKey")]
    answer_key: String,
}

#[derive(Deserialize)]
struct PiqaRow {
    goal: String,
    sol1: String,
    sol2: String,
    label: i64,
}

#[derive(Deserialize)]
struct MmluRow {
    subject: String,
    question: String,
    choices: Vec<String>,
    answer: i64,
}

#[derive(Deserialize)]
struct LambadaRow {
    text: String,
}

fn hellaswag_doc(r: HellaswagRow) -> Result<Doc> {
    ensure!(
        r.endings.len() == 4,
        "field \"endings\": expected 4 endings, found {}",
        r.endings.len()
    );
    let gold: usize = r.label.parse().ok().filter(|&g| g < 4).with_context(|| {
        format!(
            "field \"label\": expected \"0\"..\"3\", found {:?}",
            r.label
        )
    })?;
    let ctx = format!("{} {}", r.ctx_a, py_capitalize(&r.ctx_b));
    Ok(Doc {
        query: hellaswag_preprocess(&format!("{}: {ctx}", r.activity_label)),
        choices: r.endings.iter().map(|e| hellaswag_preprocess(e)).collect(),
        gold,
        subject: None,
    })
}

fn arc_doc(r: ArcRow) -> Result<Doc> {
    ensure!(
        r.choices.text.len() == r.choices.label.len() && !r.choices.text.is_empty(),
        "field \"choices\": expected as many labels as texts (at least one), found {} texts and {} labels",
        r.choices.text.len(),
        r.choices.label.len()
    );
    let gold = r
        .choices
        .label
        .iter()
        .position(|l| *l == r.answer_key)
        .with_context(|| {
            format!(
                "field \"answerKey\": {:?} is not one of the choice labels {:?}",
                r.answer_key, r.choices.label
            )
        })?;
    Ok(Doc {
        query: format!("Question: {}\nAnswer:", r.question),
        choices: r.choices.text,
        gold,
        subject: None,
    })
}

fn piqa_doc(r: PiqaRow) -> Result<Doc> {
    ensure!(
        r.label == 0 || r.label == 1,
        "field \"label\": expected 0 or 1, found {}",
        r.label
    );
    Ok(Doc {
        query: format!("Question: {}\nAnswer:", r.goal),
        choices: vec![r.sol1, r.sol2],
        gold: r.label as usize,
        subject: None,
    })
}

fn mmlu_doc(r: MmluRow) -> Result<Doc> {
    ensure!(
        r.choices.len() == 4,
        "field \"choices\": expected 4 choices, found {}",
        r.choices.len()
    );
    ensure!(
        (0..4).contains(&r.answer),
        "field \"answer\": expected 0..3, found {}",
        r.answer
    );
    ensure!(
        !r.subject.is_empty(),
        "field \"subject\": expected a subject name"
    );
    let c = &r.choices;
    Ok(Doc {
        query: format!(
            "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
            py_strip(&r.question),
            c[0],
            c[1],
            c[2],
            c[3]
        ),
        choices: ["A", "B", "C", "D"].map(String::from).to_vec(),
        gold: r.answer as usize,
        subject: Some(r.subject),
    })
}

fn lambada_doc(r: LambadaRow) -> Result<Doc> {
    // `text.split(' ')[:-1]|join(' ')` and `' ' + text.split(' ')[-1]`
    let Some((ctx, last)) = r.text.rsplit_once(' ') else {
        bail!("field \"text\": expected a passage with at least one space before its last word");
    };
    ensure!(
        !ctx.is_empty() && !last.is_empty(),
        "field \"text\": expected words before and after the last space, found {:?}",
        r.text
    );
    Ok(Doc {
        query: ctx.to_string(),
        choices: vec![format!(" {last}")],
        gold: 0,
        subject: None,
    })
}

/// Reads every row of a JSONL (or gzipped JSONL) file as `T` and converts it with `f`; an error
/// names the file, the line and what the line was expected to hold.
fn read_rows<T: DeserializeOwned>(
    path: &Path,
    expected: &str,
    f: impl Fn(T) -> Result<Doc>,
) -> Result<Vec<Doc>> {
    let reader = open_maybe_gz(path)?;
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| {
            format!(
                "{}:{}: reading (expected UTF-8 JSON lines, gzipped or not)",
                path.display(),
                i + 1
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row: T = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: expected a JSON object {expected}",
                path.display(),
                i + 1
            )
        })?;
        out.push(f(row).with_context(|| format!("{}:{}", path.display(), i + 1))?);
    }
    ensure!(
        !out.is_empty(),
        "{}: no items (expected JSON lines {expected})",
        path.display()
    );
    Ok(out)
}

/// The file of `stem` in `dir`: `STEM.jsonl.gz`, else `STEM.jsonl`; `None` if neither exists.
pub fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.jsonl.gz"), format!("{stem}.jsonl")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn missing(b: Benchmark, dir: &Path, stem: &str) -> anyhow::Error {
    let how = if b == Benchmark::Piqa {
        format!(
            "PIQA is not shipped (its licence is unknown); convert it on this machine with\n  \
             python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pyarrow\n  \
             /tmp/venv/bin/python tools/convert_benchmarks.py --only piqa --out {}",
            dir.display()
        )
    } else {
        "the shipped sets live in assets/benchmarks/ (pass --benchmark-dir to read another \
         directory; tools/convert_benchmarks.py rebuilds them)"
            .to_string()
    };
    anyhow::anyhow!(
        "benchmark {}: no {stem}.jsonl.gz or {stem}.jsonl in {}; {how}",
        b.name(),
        dir.display()
    )
}

/// Reads benchmark `b` from `dir` (`STEM.jsonl.gz` or `STEM.jsonl`; MMLU also reads
/// `mmlu_dev` for its few-shot examples when `need_fewshot`), formatted as the harness does.
pub fn load(b: Benchmark, dir: &Path, need_fewshot: bool) -> Result<TaskData> {
    let stem = b.file_stem();
    let path = find_file(dir, stem).ok_or_else(|| missing(b, dir, stem))?;
    let fields = b.row_fields();
    let docs = match b {
        Benchmark::Hellaswag => read_rows(&path, fields, hellaswag_doc)?,
        Benchmark::ArcEasy | Benchmark::ArcChallenge => read_rows(&path, fields, arc_doc)?,
        Benchmark::Piqa => read_rows(&path, fields, piqa_doc)?,
        Benchmark::Mmlu => read_rows(&path, fields, mmlu_doc)?,
        Benchmark::Lambada => read_rows(&path, fields, lambada_doc)?,
    };
    let fewshot = if b == Benchmark::Mmlu && need_fewshot {
        let p = find_file(dir, "mmlu_dev").ok_or_else(|| {
            anyhow::anyhow!(
                "benchmark mmlu: few-shot examples need mmlu_dev.jsonl.gz or mmlu_dev.jsonl in {} \
                 (the dev split; tools/convert_benchmarks.py writes it)",
                dir.display()
            )
        })?;
        read_rows(&p, fields, mmlu_doc)?
    } else {
        Vec::new()
    };
    Ok(TaskData {
        benchmark: b,
        docs,
        fewshot,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_helpers() {
        assert_eq!(py_capitalize("he IS here"), "He is here");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(py_capitalize("éCOLE"), "École");
        assert_eq!(py_strip("\u{1f} a b \n"), "a b");
        assert!(py_isspace('\u{a0}') && !py_isspace('x'));
    }

    #[test]
    fn hellaswag_preprocess_as_the_harness() {
        // " [title]" becomes ". ", brackets vanish, each double space becomes one
        assert_eq!(
            hellaswag_preprocess("  How to cook [title] Boil water. [step] Add salt.  "),
            "How to cook. Boil water. Add salt."
        );
        // one pass of replace: three spaces leave two
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
        // non-greedy, and not across a newline
        assert_eq!(hellaswag_preprocess("x [a] y [b] z"), "x y z");
        assert_eq!(hellaswag_preprocess("x [a\n] y"), "x [a\n] y");
    }

    #[test]
    fn lambada_splits_at_the_last_space() {
        let d = lambada_doc(LambadaRow {
            text: "he said  hello there".into(),
        })
        .unwrap();
        assert_eq!(d.query, "he said  hello");
        assert_eq!(d.choices, vec![" there".to_string()]);
        assert!(lambada_doc(LambadaRow {
            text: "word".into()
        })
        .is_err());
    }
}
