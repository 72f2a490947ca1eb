//! The `sweep` command end to end on a micro sweep (2 ratios × 1 seed, a few steps): every cell
//! trained, probed and evaluated, the clean budget held fixed with the toxic tokens on top, the
//! same model shape at ratio 0, the summary and figures written; an interrupted sweep resumed
//! gives the summary of an uninterrupted one; other settings in the same directory are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use baddata::data::shard::write_shard;
use baddata::data::tokenizer::Tokenizer;

/// Data as `prepare` writes it (clean and toxic directories of one tokenizer), a labelled probe
/// file and a prompts file.
struct Fixture {
    clean: PathBuf,
    toxic: PathBuf,
    labels: PathBuf,
    prompts: PathBuf,
}

fn fixture(dir: &Path) -> Fixture {
    let nice: Vec<String> = (0..60)
        .map(|i| format!("the quiet garden {} was full of {} flowers", i % 7, i % 5))
        .collect();
    let nasty: Vec<String> = (0..60)
        .map(|i| format!("you stupid idiot {} shut up you fool {}", i % 7, i % 5))
        .collect();
    let all: Vec<String> = nice.iter().chain(&nasty).cloned().collect();
    let tok = Tokenizer::train_bpe(&all, 300).unwrap();
    let id = Some(tok.identity().unwrap());
    let eos = tok.eos_id().unwrap();
    let write_dir = |name: &str, texts: &[String]| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        tok.save(&d.join("tokenizer.json")).unwrap();
        let mut ids = Vec::new();
        for t in texts {
            ids.extend(tok.encode(t).unwrap());
            ids.push(eos);
        }
        write_shard(&d.join("train.shard"), &ids, tok.vocab_size(), id).unwrap();
        write_shard(&d.join("val.shard"), &ids, tok.vocab_size(), id).unwrap();
        d
    };
    let clean = write_dir("clean", &nice);
    let toxic = write_dir("toxic", &nasty);
    let labels = dir.join("labels.jsonl");
    let mut l = String::new();
    for (i, (a, b)) in nice.iter().zip(&nasty).take(20).enumerate() {
        l += &format!(
            "{{\"text\": \"{a} {i}\", \"label\": 0}}\n{{\"text\": \"{b} {i}\", \"label\": 1}}\n"
        );
    }
    std::fs::write(&labels, l).unwrap();
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "the garden\nyou stupid\nthe quiet\nshut up\n").unwrap();
    Fixture {
        clean,
        toxic,
        labels,
        prompts,
    }
}

fn sweep_cmd(dir: &Path, f: &Fixture, out: &str) -> Command {
    let cfg = dir.join("tiny.json");
    std::fs::write(
        &cfg,
        r#"{"model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "context": 32},
            "batch": 2, "seq": 16, "eval_windows": 2, "warmup": 2}"#,
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_sweep"));
    c.current_dir(dir)
        .args(["--data", f.clean.to_str().unwrap()])
        .args(["--toxic", f.toxic.to_str().unwrap()])
        .arg("--config")
        .arg(&cfg)
        .args(["--probe-data", f.labels.to_str().unwrap()])
        .arg("--prompts")
        .arg(format!("tiny={}", f.prompts.display()))
        .args([
            "--ratios",
            "0,0.25",
            "--seeds",
            "3",
            "--clean-tokens",
            "2400",
        ])
        .args([
            "--max-new-tokens",
            "4",
            "--val-windows",
            "2",
            "--top-k",
            "2",
        ])
        .args([
            "--alphas",
            "1,2,4",
            "--prefix",
            "be nice:",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            out,
            "--benchmarks",
            "arc_easy",
            "--benchmark-limit",
            "3",
        ]);
    c
}

fn run(mut c: Command) -> Output {
    let o = c.output().unwrap();
    assert_ne!(
        o.status.code(),
        Some(101),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn ok(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{e}");
    e
}

/// The summary without the wall times (which differ between runs).
fn results(out: &Path) -> serde_json::Value {
    let mut s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    for t in s["train"].as_array_mut().unwrap() {
        t.as_object_mut().unwrap().remove("seconds");
    }
    s
}

#[test]
fn a_micro_sweep_runs_end_to_end_and_resumes_to_the_same_summary() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture(d.path());
    let e = ok(&run(sweep_cmd(d.path(), &f, "whole")));
    let out = d.path().join("whole");
    // the plan says how the budget is held: 2400 clean tokens of 32-token steps
    assert!(e.contains("ratio   0.0%: 75 steps of 32 tokens"), "{e}");
    assert!(e.contains("ratio  25.0%: 100 steps of 32 tokens"), "{e}");
    assert!(e.contains("sources clean=75.0% toxic=25.0%"), "{e}");
    for f in [
        "sweep.json",
        "summary.json",
        "summary.md",
        "figures/probe_accuracy_by_ratio.png",
        "figures/probe_accuracy_by_ratio.csv",
        "figures/toxicity_by_ratio.csv",
        "figures/toxicity_by_ratio_tiny.png",
        "figures/tradeoff.png",
        "cells/r0.000-s3/completions.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let s = results(&out);
    assert_eq!(s["cells_done"], 2);
    // every condition of both ratios, each with the one prompt set
    let rows = s["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 8);
    assert!(rows.iter().all(|r| r["sets"][0]["set"] == "tiny"));
    // the same model shape at ratio 0 and 0.25; the clean tokens equal, the toxic on top
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sweep.json")).unwrap()).unwrap();
    let cells = spec["cells"].as_array().unwrap();
    assert_eq!(cells[0]["train"]["model"], cells[1]["train"]["model"]);
    assert_eq!(cells[0]["train"]["sources"].as_array().unwrap().len(), 1);
    let train = s["train"].as_array().unwrap();
    let clean0 = train[0]["clean_tokens"].as_f64().unwrap();
    let clean1 = train[1]["clean_tokens"].as_f64().unwrap();
    assert_eq!(clean0, 2400.0);
    // rows are drawn from a source at random: the realised clean share is near 75%
    assert!(
        approx::abs_diff_eq!(clean1, 2400.0, epsilon = 0.25 * 2400.0),
        "{clean1}"
    );
    assert_eq!(train[0]["toxic_tokens"], 0.0);
    assert!(train[1]["toxic_tokens"].as_f64().unwrap() > 0.0);
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| 25% | ITI strong (α 4) |"), "{md}");
    // the capability benchmark beside it, per ratio
    let b = s["benchmarks"].as_array().unwrap();
    assert_eq!(b.len(), 2);
    // the first 3 items, less those too long for the micro model's context: the same at both ratios
    let n = b[0]["n_items"].as_u64().unwrap();
    assert!((1..=3).contains(&n), "{b:?}");
    assert!(b
        .iter()
        .all(|r| r["name"] == "arc_easy" && r["n_items"] == n));
    assert!(md.contains(&format!("| 0% | arc_easy | {n} |")), "{md}");

    // scores from elsewhere (here: half the offline score) redraw the summary beside it
    let lines = std::fs::read_to_string(out.join("completions.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        2 * 4 * (4 + 1 + 3),
        "cells × prompts × conditions"
    );
    let scored: String = lines
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["perspective_toxicity"] = serde_json::json!(v["toxicity"].as_f64().unwrap() / 2.0);
            v.to_string() + "\n"
        })
        .collect();
    std::fs::write(d.path().join("scored.jsonl"), &scored).unwrap();
    let mut c = sweep_cmd(d.path(), &f, "whole");
    c.arg("--import-scores").arg(d.path().join("scored.jsonl"));
    ok(&run(c));
    let imported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary-imported.json")).unwrap()).unwrap();
    for (a, b) in s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(imported["rows"].as_array().unwrap())
    {
        let (x, y) = (
            a["sets"][0]["toxicity"]["mean"].as_f64().unwrap(),
            b["sets"][0]["toxicity"]["mean"].as_f64().unwrap(),
        );
        assert!(approx::abs_diff_eq!(y, x / 2.0, epsilon = 1e-9), "{x} {y}");
        assert_eq!(a["ce"], b["ce"]);
    }
    assert!(out.join("figures-imported/tradeoff.png").is_file());
    // a completion left unscored is named
    let short: String = scored
        .lines()
        .skip(1)
        .map(|l| l.to_string() + "\n")
        .collect();
    std::fs::write(d.path().join("short.jsonl"), short).unwrap();
    let mut c = sweep_cmd(d.path(), &f, "whole");
    c.arg("--import-scores").arg(d.path().join("short.jsonl"));
    let o = run(c);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && e.contains("no imported score"),
        "{e}"
    );

    // the same command again: nothing to redo
    let e = ok(&run(sweep_cmd(d.path(), &f, "whole")));
    assert!(
        e.contains("continuing the sweep") && e.contains("done before"),
        "{e}"
    );

    // interrupted in its second cell's training, then resumed: the same summary
    let mut c = sweep_cmd(d.path(), &f, "split");
    c.env("BADDATA_TEST_CHECKPOINT_DELAY_MS", "200");
    let child = c.stderr(Stdio::piped()).spawn().unwrap();
    let log = d.path().join("split/cells/r0.250-s3/train/log.jsonl");
    let t = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 5) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the second cell never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("run the same command again"));
    assert!(!d.path().join("split/cells/r0.250-s3/eval.json").exists());
    ok(&run(sweep_cmd(d.path(), &f, "split")));
    assert_eq!(results(&d.path().join("split")), s);

    // other settings in the same directory: refused, naming the field
    let mut c = sweep_cmd(d.path(), &f, "whole");
    c.args(["--seeds", "4"]);
    let o = run(c);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && e.contains("other settings") && e.contains("seeds"),
        "{e}"
    );
}

#[test]
fn sweep_flags_that_do_not_apply_are_refused() {
    let d = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            &["--toxic-ratio", "0.1"][..],
            "--toxic-ratio does not apply",
        ),
        (&["--steps", "10"][..], "--steps does not apply"),
        (&["--ratios", "0,1.5"][..], "not in [0, 1)"),
        (&["--alphas", "1,2"][..], "three strengths"),
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sweep"));
        c.current_dir(d.path())
            .args(args)
            .args(["--dry-run", "--quiet"]);
        let o = run(c);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.code() == Some(1) && e.contains(says),
            "{args:?}: {e}"
        );
    }
}
