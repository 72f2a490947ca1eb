//! `evaluate --benchmark`: the scorer against the independent Python reference recorded in
//! `tests/fixtures/benchmark/reference-*.json` (numpy forward pass and the harness's rules,
//! `tools/benchmark_reference.py`), the harness's formatting of each task, left truncation,
//! few-shot determinism under a seed, batching, and clear errors for missing or garbled files.

use std::path::{Path, PathBuf};
use std::process::Command;

use baddata::backend::cpu::Cpu;
use baddata::checkpoint;
use baddata::data::tokenizer::Tokenizer;
use baddata::eval::benchmark::requests::{build_requests, encode_pair, fewshot_context, request};
use baddata::eval::benchmark::tasks::{self, Benchmark};
use baddata::eval::benchmark::{run_task, selected, BenchmarkOptions, BenchmarkResult};
use baddata::model::Model;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/benchmark")
}

struct Fixture {
    model: Model<Cpu<f32>>,
    params: Vec<f32>,
    tok: Tokenizer,
}

fn fixture() -> Fixture {
    let ck = checkpoint::load(&fixtures().join("model")).unwrap();
    let tok = Tokenizer::load(&ck.dir.join("tokenizer.json")).unwrap();
    let model = Model::new(ck.config.clone(), Cpu::<f32>::new()).unwrap();
    Fixture {
        model,
        params: ck.params,
        tok,
    }
}

fn opts(shots: usize, seed: u64, batch: usize) -> BenchmarkOptions {
    BenchmarkOptions {
        shots,
        seed,
        limit: None,
        batch,
        progress: false,
    }
}

fn run(f: &mut Fixture, b: Benchmark, o: &BenchmarkOptions) -> BenchmarkResult {
    let task = tasks::load(b, &fixtures(), o.shots > 0).unwrap();
    let params = f.params.clone();
    run_task(&mut f.model, &params, &f.tok, &task, o).unwrap()
}

/// Every fixture item's log-likelihoods agree with the reference to 1e-4 nats, and so do the
/// greedy checks, the chosen answers (acc and acc_norm), the truncation flags and the
/// accuracies; with 2 shots the few-shot examples are the ones the reference was given.
fn check_against(reference: &str, shots: usize, seed: u64) {
    let name = reference;
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut f = fixture();
    let mut worst = 0.0f64;
    let mut truncated = 0;
    for b in Benchmark::ALL {
        let want = &reference["benchmarks"][b.name()];
        assert!(want.is_object(), "{name}: no {} entry", b.name());
        let got = run(&mut f, b, &opts(shots, seed, 3));
        let items = want["items"].as_array().unwrap();
        assert_eq!(got.n_items, items.len(), "{}", b.name());
        for (g, w) in got.items.iter().zip(items) {
            let ctx = format!("{} item {}", b.name(), g.index);
            assert_eq!(g.index as u64, w["index"].as_u64().unwrap(), "{ctx}");
            let wl: Vec<f64> = serde_json::from_value(w["lls"].clone()).unwrap();
            assert_eq!(g.lls.len(), wl.len(), "{ctx}");
            for (a, e) in g.lls.iter().zip(&wl) {
                worst = worst.max((a - e).abs());
                assert!(
                    approx::abs_diff_eq!(a, e, epsilon = 1e-4),
                    "{ctx}: ll {a} vs reference {e}"
                );
            }
            let wg: Vec<bool> = serde_json::from_value(w["greedy"].clone()).unwrap();
            assert_eq!(g.greedy, wg, "{ctx}: greedy");
            assert_eq!(g.pred as u64, w["pred"].as_u64().unwrap(), "{ctx}: pred");
            assert_eq!(
                g.pred_norm.map(|p| p as u64),
                w.get("pred_norm").and_then(|p| p.as_u64()),
                "{ctx}: pred_norm"
            );
            assert_eq!(g.truncated > 0, w["truncated"].as_bool().unwrap(), "{ctx}");
            truncated += usize::from(g.truncated > 0);
        }
        approx::assert_abs_diff_eq!(
            got.acc.value,
            want["acc"].as_f64().unwrap(),
            epsilon = 1e-12
        );
        if let Some(n) = want.get("acc_norm") {
            approx::assert_abs_diff_eq!(
                got.acc_norm.unwrap().value,
                n.as_f64().unwrap(),
                epsilon = 1e-12
            );
        } else {
            assert!(got.acc_norm.is_none(), "{}", b.name());
        }
        if let Some(p) = want.get("perplexity") {
            let ours = got.perplexity.unwrap().value;
            let p = p.as_f64().unwrap();
            assert!((ours - p).abs() <= 1e-6 * p, "perplexity {ours} vs {p}");
        }
    }
    // the fixtures exercise the left truncation (window 128)
    assert!(truncated > 0);
    eprintln!("{name}: largest |ll difference| {worst:.2e}");
}

#[test]
fn zero_shot_scores_match_the_reference() {
    check_against("reference-0shot.json", 0, 0);
}

/// The 2-shot reference formatted the examples itself, from the indices of baddata's draw
/// with seed 5 (MMLU: its first two dev questions); the same seed must draw them again.
#[test]
fn two_shot_scores_match_the_reference() {
    check_against("reference-2shot.json", 2, 5);
}

#[test]
fn prompts_follow_the_harness_formats() {
    let dir = fixtures();
    let hs = tasks::load(Benchmark::Hellaswag, &dir, false).unwrap();
    let d = &hs.docs[0];
    assert_eq!(
        d.query,
        "Roof shingle removal: A man is sitting on a roof. He"
    );
    assert_eq!(d.choices[3], "starts pulling up roofing on a roof.");
    assert_eq!(d.gold, 3);
    // ctx_b capitalised (the rest lower-cased), brackets dropped, double spaces halved
    let d = &hs.docs[3];
    assert_eq!(
        d.query,
        "Using a DVD player: A woman stands in front of a television. The dvd player is turned on and she"
    );
    assert_eq!(d.choices[0], "presses play on the remote and sits down.");
    assert_eq!(d.choices[3], "sings to the television set.");
    let arc = tasks::load(Benchmark::ArcEasy, &dir, false).unwrap();
    assert_eq!(
        arc.docs[0].query,
        "Question: Which technology was developed most recently?\nAnswer:"
    );
    assert_eq!(arc.docs[0].choices[0], "cellular telephone");
    let piqa = tasks::load(Benchmark::Piqa, &dir, false).unwrap();
    assert_eq!(
        piqa.docs[1].query,
        "Question: To loosen a stuck jar lid,\nAnswer:"
    );
    assert_eq!(piqa.docs[1].gold, 1);
    let mmlu = tasks::load(Benchmark::Mmlu, &dir, true).unwrap();
    let (ctx, picks) = fewshot_context(&mmlu, 0, 1, 0).unwrap();
    let dev = &mmlu.fewshot[0];
    assert_eq!(picks, vec![0]);
    let want = format!(
        "The following are multiple choice questions (with answers) about anatomy.\n\n{} {}\n\n{}",
        dev.query,
        dev.answer(),
        mmlu.docs[0].query
    );
    assert_eq!(ctx, want);
    assert!(mmlu.docs[0].query.ends_with("\nD. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\nAnswer:"));
    assert!(mmlu.docs[0]
        .query
        .starts_with("A lesion causing compression"));
    assert_eq!(mmlu.docs[0].choices, ["A", "B", "C", "D"]);
    let lam = tasks::load(Benchmark::Lambada, &dir, false).unwrap();
    let last = lam.docs.last().unwrap();
    assert!(last.query.ends_with(" and said "));
    assert_eq!(last.choices, [" hello"]);
}

#[test]
fn continuation_tokens_are_those_of_the_whole_string() {
    let f = fixture();
    // trailing whitespace of the context moves to the continuation
    let (ctx, cont) = encode_pair(&f.tok, "she said ", " hello").unwrap();
    assert_eq!(ctx, f.tok.encode("she said").unwrap());
    let whole = f.tok.encode("she said  hello").unwrap();
    assert_eq!([ctx.clone(), cont.clone()].concat(), whole);
    let (ctx, cont) = encode_pair(&f.tok, "Question: why?\nAnswer:", " because").unwrap();
    assert_eq!(
        [ctx, cont].concat(),
        f.tok.encode("Question: why?\nAnswer: because").unwrap()
    );
}

#[test]
fn long_contexts_are_left_truncated_to_the_window() {
    let f = fixture();
    let ctx = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let (c, k) = encode_pair(&f.tok, &ctx, " again").unwrap();
    let all = [c.clone(), k.clone()].concat();
    let r = request(&f.tok, 0, 0, &ctx, " again", 16).unwrap().unwrap();
    assert_eq!(r.continuation, k);
    assert_eq!(r.input.len(), 16);
    assert_eq!(r.truncated, all.len() - 17);
    // the kept tokens are the last 17, minus the final one
    assert_eq!(r.input, all[all.len() - 17..all.len() - 1].to_vec());
    let short = request(&f.tok, 0, 0, "Question: hi\nAnswer:", " yes", 128)
        .unwrap()
        .unwrap();
    assert_eq!(short.truncated, 0);
    // a continuation longer than the window is refused, and its item skipped
    assert!(request(&f.tok, 4, 1, "x", &" word".repeat(40), 8)
        .unwrap()
        .is_none());
    let arc = tasks::load(Benchmark::ArcEasy, &fixtures(), false).unwrap();
    let built = build_requests(&arc, &[0, 1, 2], &f.tok, 0, 0, 4).unwrap();
    assert!(built.requests.is_empty() && built.kept.is_empty());
    assert_eq!(built.skipped, vec![0, 1, 2]);
}

#[test]
fn fewshot_draws_are_deterministic_under_a_seed() {
    let dir = fixtures();
    let arc = tasks::load(Benchmark::ArcEasy, &dir, false).unwrap();
    let f = fixture();
    let all: Vec<usize> = (0..arc.docs.len()).collect();
    let draw = |seed| build_requests(&arc, &all, &f.tok, 2, seed, 128).unwrap();
    let (b1, b2) = (draw(9), draw(9));
    assert_eq!(b1, b2);
    let s1 = b1.fewshot;
    for (i, picks) in s1.iter().enumerate() {
        assert_eq!(picks.len(), 2);
        assert!(!picks.contains(&i) && picks[0] != picks[1], "{picks:?}");
    }
    // an item's examples do not depend on which other items run
    let only3 = build_requests(&arc, &[3], &f.tok, 2, 9, 128).unwrap();
    assert_eq!(only3.fewshot[0], s1[3]);
    // another seed draws other examples for some item
    let others: Vec<_> = (10..14).map(|s| draw(s).fewshot).collect();
    assert!(others.iter().any(|s| *s != s1));
}

#[test]
fn batching_does_not_change_the_scores() {
    let mut f = fixture();
    let one = run(&mut f, Benchmark::Hellaswag, &opts(0, 0, 1));
    let many = run(&mut f, Benchmark::Hellaswag, &opts(0, 0, 16));
    for (a, b) in one.items.iter().zip(&many.items) {
        for (x, y) in a.lls.iter().zip(&b.lls) {
            assert!(approx::abs_diff_eq!(x, y, epsilon = 1e-5), "{x} vs {y}");
        }
    }
}

#[test]
fn limit_takes_the_first_items_and_mmlu_per_subject() {
    let dir = fixtures();
    let mmlu = tasks::load(Benchmark::Mmlu, &dir, false).unwrap();
    // 3 anatomy then 3 high_school_biology items
    assert_eq!(selected(&mmlu, Some(2)), vec![0, 1, 3, 4]);
    assert_eq!(selected(&mmlu, None).len(), 6);
    let arc = tasks::load(Benchmark::ArcEasy, &dir, false).unwrap();
    assert_eq!(selected(&arc, Some(2)), vec![0, 1]);
}

#[test]
fn missing_and_garbled_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        tasks::load(Benchmark::ArcEasy, tmp.path(), false).unwrap_err()
    );
    assert!(
        err.contains("arc_easy.jsonl.gz") && err.contains("--benchmark-dir"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        tasks::load(Benchmark::Piqa, tmp.path(), false).unwrap_err()
    );
    assert!(err.contains("convert_benchmarks.py --only piqa"), "{err}");
    let p = tmp.path().join("hellaswag.jsonl");
    std::fs::write(&p, "{\"activity_label\": \"x\", \"ctx_a\": \"a\"\n").unwrap();
    let err = format!(
        "{:#}",
        tasks::load(Benchmark::Hellaswag, tmp.path(), false).unwrap_err()
    );
    assert!(
        err.contains("hellaswag.jsonl:1") && err.contains("\"endings\""),
        "{err}"
    );
    std::fs::write(
        &p,
        "{\"activity_label\": \"x\", \"ctx_a\": \"a\", \"ctx_b\": \"b\", \"endings\": [\"1\", \"2\", \"3\", \"4\"], \"label\": \"7\"}\n",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        tasks::load(Benchmark::Hellaswag, tmp.path(), false).unwrap_err()
    );
    assert!(
        err.contains("hellaswag.jsonl:1") && err.contains("field \"label\""),
        "{err}"
    );
    std::fs::write(tmp.path().join("mmlu.jsonl.gz"), b"\x1f\x8b not gzip").unwrap();
    let err = format!(
        "{:#}",
        tasks::load(Benchmark::Mmlu, tmp.path(), false).unwrap_err()
    );
    assert!(err.contains("mmlu.jsonl.gz:1"), "{err}");
    std::fs::write(tmp.path().join("arc_challenge.jsonl"), "\n\n").unwrap();
    let err = format!(
        "{:#}",
        tasks::load(Benchmark::ArcChallenge, tmp.path(), false).unwrap_err()
    );
    assert!(err.contains("no items"), "{err}");
    assert!(Benchmark::parse_list(&["arc".into()]).is_err());
    assert_eq!(
        Benchmark::parse_list(&["mmlu".into(), "all".into()])
            .unwrap()
            .len(),
        6
    );
}

/// The command end to end: the reports are written, and a missing set exits 1 with `error:`.
#[test]
fn evaluate_benchmark_command() {
    let out = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_evaluate");
    let o = Command::new(bin)
        .args([
            "--benchmark",
            "arc_easy,lambada",
            "--device",
            "cpu",
            "--quiet",
        ])
        .arg("--checkpoint")
        .arg(fixtures().join("model"))
        .arg("--benchmark-dir")
        .arg(fixtures())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for f in [
        "arc_easy.json",
        "arc_easy-items.jsonl",
        "lambada.json",
        "benchmarks.json",
        "benchmarks.md",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.path().join("benchmarks.md")).unwrap();
    assert!(md.contains("| arc_easy | validation | 5 | 0 |"), "{md}");
    assert!(stderr.contains("left-truncated"), "{stderr}");
    let o = Command::new(bin)
        .args(["--benchmark", "piqa", "--device", "cpu"])
        .arg("--checkpoint")
        .arg(fixtures().join("model"))
        .arg("--benchmark-dir")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("piqa"),
        "{stderr}"
    );
}

/// A cloze item whose target is the model's own greedy next token scores `greedy` (LAMBADA's
/// acc counts it), and one with another token does not.
#[test]
fn greedy_match_counts_for_cloze_accuracy() {
    use baddata::eval::benchmark::{Doc, TaskData};
    let mut f = fixture();
    let params = f.params.clone();
    let (v, real) = (f.model.cfg.vocab_size, f.model.cfg.vocab_real);
    // the first fixture query whose argmax next token comes back as that one token after the
    // query (byte fragments and merges with the query's end do not), and the lowest-scored
    // token that does
    let mut queries = Vec::new();
    for b in [
        Benchmark::ArcEasy,
        Benchmark::Mmlu,
        Benchmark::Hellaswag,
        Benchmark::Lambada,
    ] {
        let t = tasks::load(b, &fixtures(), false).unwrap();
        queries.extend(t.docs.into_iter().map(|d| d.query));
    }
    let mut found = None;
    for query in &queries {
        let ids = f.tok.encode(query).unwrap();
        if ids.len() > f.model.cfg.context {
            continue;
        }
        let logits = f.model.logits(&params, &ids, 1, ids.len()).unwrap();
        let last = &logits[(ids.len() - 1) * v..];
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let round_trips = |t: usize| -> Option<String> {
            let w = f.tok.decode(&[t as u32]).ok()?;
            let (_, cont) = encode_pair(&f.tok, query, &w).ok()?;
            (t < real && cont == [t as u32]).then_some(w)
        };
        if let Some(good) = round_trips(order[0]) {
            let bad = order.iter().rev().find_map(|&t| round_trips(t)).unwrap();
            found = Some((query.clone(), good, bad));
            break;
        }
    }
    let (query, good, bad) = found.expect("no fixture query with a round-tripping argmax");
    let task = TaskData {
        benchmark: Benchmark::Lambada,
        docs: [good, bad]
            .into_iter()
            .map(|w| Doc {
                query: query.clone(),
                choices: vec![w],
                gold: 0,
                subject: None,
            })
            .collect(),
        fewshot: Vec::new(),
        path: PathBuf::from("made-up"),
    };
    let r = run_task(&mut f.model, &params, &f.tok, &task, &opts(0, 0, 2)).unwrap();
    assert_eq!(r.items[0].greedy, vec![true]);
    assert_eq!(r.items[1].greedy, vec![false]);
    assert_eq!(r.acc.value, 0.5);
}
