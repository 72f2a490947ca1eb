//! Tests of the offline toxicity scorer against two independent oracles: the reference scores of
//! the original Python package (assets/SOURCES.md) and the scores recorded, rounded to 4 decimals,
//! in the demo's toxic passages (assets/demo/toxic-demo.jsonl.gz), both computed by
//! `alt-profanity-check` 1.9.1 in Python.

use baddata::score::Scorer;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

fn asset(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(rel)
}

/// `profanity_check.predict_prob` 1.9.1, as listed in assets/SOURCES.md.
const REFERENCE: &[(&str, f64)] = &[
    ("Have a wonderful day, friend.", 0.013232),
    ("you are a disgusting piece of shit", 0.999977),
    ("The committee will meet on Tuesday.", 0.093800),
    (
        "Thou art a boil, a plague sore, an embossed carbuncle.",
        0.069368,
    ),
    ("I don't care what you think, idiot.", 0.999809),
    ("Die, you stupid fool!", 0.999992),
    ("12345 !!!", 0.036376),
    ("", 0.036376),
];

#[test]
fn reproduces_the_python_reference_scores() {
    let scorer = Scorer::embedded().expect("embedded scorer parses");
    assert_eq!(scorer.vocab_size(), 15_442);
    assert_eq!(scorer.members(), 5);
    for &(text, want) in REFERENCE {
        let got = scorer.score(text);
        assert!(
            (got - want).abs() < 1e-4,
            "{text:?}: got {got:.6}, Python gave {want:.6}"
        );
        // The reference values are printed to 6 decimals: hold the port to that rounding too.
        assert!(
            (got - want).abs() <= 0.5e-6 + 1e-12,
            "{text:?}: got {got:.8}, Python gave {want:.6}"
        );
    }
}

/// Rows of the demo's toxic passages: (text, recorded score).
fn toxic_demo_rows() -> Vec<(String, f64)> {
    let path = asset("demo/toxic-demo.jsonl.gz");
    let file = std::fs::File::open(&path).expect("toxic-demo.jsonl.gz is in the project");
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    reader
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            (
                v["text"].as_str().expect("text field").to_string(),
                v["score"].as_f64().expect("score field"),
            )
        })
        .collect()
}

#[test]
fn reproduces_every_score_recorded_in_the_toxic_demo() {
    let scorer = Scorer::embedded().unwrap();
    let rows = toxic_demo_rows();
    assert_eq!(rows.len(), 3068);
    let texts: Vec<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    let scores = scorer.score_batch(&texts);
    let mut worst = 0.0f64;
    for ((text, want), got) in rows.iter().zip(&scores) {
        // Recorded as round(score, 4): the port must round to the same value.
        let err = (got - want).abs();
        worst = worst.max(err);
        let rounded: f64 = format!("{got:.4}").parse().unwrap();
        assert_eq!(rounded, *want, "{text:?}: got {got:.8}, recorded {want:.4}");
        assert!(*want > 0.5, "the demo holds passages scored above 0.5");
    }
    eprintln!("toxic demo: {} rows, worst |diff| {worst:.2e}", rows.len());
}

#[test]
fn batch_matches_single_in_order() {
    let scorer = Scorer::embedded().unwrap();
    let texts: Vec<String> = REFERENCE
        .iter()
        .cycle()
        .take(100)
        .map(|(t, _)| t.to_string())
        .collect();
    let batch = scorer.score_batch(&texts);
    assert_eq!(batch.len(), texts.len());
    for (t, s) in texts.iter().zip(&batch) {
        assert_eq!(*s, scorer.score(t), "{t:?}");
    }
    assert!(scorer.score_batch(&[]).is_empty());
}

#[test]
fn unicode_and_odd_text_do_not_panic() {
    let scorer = Scorer::embedded().unwrap();
    let intercepts_only = scorer.score("");
    let texts = [
        "Je ne sais pas pourquoi, espèce d'idiot!",
        "これは日本語の文です。迷惑",
        "ΣΊΣΥΦΟΣ ΟΔΟΣ",
        "İstanbul'da çok güzel bir gün",
        "🤬🤬🤬 💩",
        "e\u{301}\u{301}\u{301}\u{200d}\u{0}\u{feff}",
        "\u{10ffff}\u{fffd}",
        &"shit ".repeat(100_000),
    ];
    for t in texts {
        let s = scorer.score(t);
        assert!((0.0..=1.0).contains(&s), "{t:.40}: {s}");
    }
    // Emoji and lone marks hold no token: the intercepts alone.
    assert_eq!(scorer.score("🤬🤬🤬 💩"), intercepts_only);
    // Case does not matter (lowercased first), nor does repeating the whole text (L2 norm).
    assert_eq!(
        scorer.score("YOU STUPID FOOL"),
        scorer.score("you stupid fool")
    );
    let once = scorer.score("you stupid fool");
    let twice = scorer.score("you stupid fool you stupid fool");
    approx::assert_abs_diff_eq!(once, twice, epsilon = 1e-12);
    // Stop words and unknown words change nothing; a known word does.
    assert_eq!(scorer.score("the of and"), intercepts_only);
    assert_eq!(scorer.score("zzqxv qqqzzw"), intercepts_only);
    assert!(scorer.score("idiot") > 0.9);
}

#[test]
fn from_path_reads_plain_and_gzipped_weights() {
    let gz = asset("toxicity-scorer.json.gz");
    let from_gz = Scorer::from_path(&gz).unwrap();
    let mut json = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()),
        &mut json,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("scorer.json");
    std::fs::write(&plain, &json).unwrap();
    let from_plain = Scorer::from_path(&plain).unwrap();
    for (t, _) in REFERENCE {
        assert_eq!(from_gz.score(t), from_plain.score(t));
    }
}

#[test]
fn bad_weights_are_refused_with_the_field_named() {
    let err = Scorer::from_path("/nonexistent/scorer.json.gz").unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/scorer.json.gz"));

    let base = serde_json::json!({
        "token_pattern": r"(?u)\b\w\w+\b",
        "lowercase": true,
        "stop_words": ["the"],
        "vocabulary": {"idiot": 0, "fool": 1},
        "idf": [2.0, 3.0],
        "norm": "l2",
        "members": [{"coef": [1.0, 2.0], "intercept": 0.0, "sigmoid_a": -1.0, "sigmoid_b": 0.0}]
    });
    let ok = Scorer::from_json_bytes(base.to_string().as_bytes(), "tiny").unwrap();
    // x = (2, 3)/√13 for "idiot fool"; f = (2 + 6)/√13; p = 1/(1 + exp(-f)).
    let f = 8.0 / 13f64.sqrt();
    approx::assert_abs_diff_eq!(
        ok.score("Idiot, the fool"),
        1.0 / (1.0 + (-f).exp()),
        epsilon = 1e-15
    );

    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("token_pattern", serde_json::json!("\\w+"), "token_pattern"),
        ("idf", serde_json::json!([1.0]), "idf"),
        ("norm", serde_json::json!("max"), "norm"),
        ("binary", serde_json::json!(true), "binary"),
        (
            "members",
            serde_json::json!([{"coef": [1.0], "intercept": 0.0, "sigmoid_a": 1.0, "sigmoid_b": 0.0}]),
            "members[0].coef",
        ),
    ];
    for (key, value, needle) in cases {
        let mut bad = base.clone();
        bad[key] = value;
        let err = Scorer::from_json_bytes(bad.to_string().as_bytes(), "tiny").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(needle), "{key}: {msg}");
    }
}

#[test]
fn sublinear_tf_and_bigrams_follow_scikit_learn() {
    // Hand-computed: "fool fool idiot" with sublinear tf → x = ((1 + ln 2)·3, 1·2), L2-normalised.
    let w = serde_json::json!({
        "token_pattern": r"(?u)\b\w\w+\b",
        "lowercase": true,
        "stop_words": ["you"],
        "vocabulary": {"idiot": 0, "fool": 1, "fool idiot": 2},
        "idf": [2.0, 3.0, 5.0],
        "norm": "l2",
        "sublinear_tf": true,
        "ngram_range": [1, 2],
        "members": [{"coef": [1.0, 2.0, 4.0], "intercept": 0.5, "sigmoid_a": -2.0, "sigmoid_b": 0.25}]
    });
    let s = Scorer::from_json_bytes(w.to_string().as_bytes(), "tiny").unwrap();
    // Terms: fool, fool, idiot, "fool fool" (unknown), "fool idiot" (the stop word "you" goes
    // first, so "you" between them does not break the bigram).
    let raw = [2.0, (1.0 + 2f64.ln()) * 3.0, 5.0];
    let len = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let f = 0.5 + (raw[0] + 2.0 * raw[1] + 4.0 * raw[2]) / len;
    let want = 1.0 / (1.0 + (-2.0 * f + 0.25).exp());
    approx::assert_abs_diff_eq!(s.score("fool FOOL you idiot"), want, epsilon = 1e-14);
}

/// Runs the `score` command with `args`, feeding `stdin`; returns (status ok, stdout, stderr).
fn run_score(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_score"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("score runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn command_prints_one_score_per_line() {
    let input: String = REFERENCE.iter().map(|(t, _)| format!("{t}\r\n")).collect();
    let (ok, stdout, _) = run_score(&["--quiet", "--batch", "3"], &input);
    assert!(ok);
    let want: Vec<String> = REFERENCE.iter().map(|(_, s)| format!("{s:.6}")).collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), want);
}

#[test]
fn command_adds_a_toxicity_field_to_jsonl() {
    let input = "{\"id\": 1, \"text\": \"Die, you stupid fool!\"}\n\n\
                 {\"text\": \"Have a wonderful day, friend.\", \"toxicity\": 9}\n";
    let (ok, stdout, stderr) = run_score(&["--jsonl", "text", "--device", "cpu"], input);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("texts/s"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "{\"id\": 1, \"text\": \"Die, you stupid fool!\",\"toxicity\":0.999992}"
    );
    let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(second["toxicity"].as_f64(), Some(0.013232));
    assert_eq!(lines.len(), 2);

    let (ok, _, stderr) = run_score(&["--jsonl", "body"], "{\"text\": \"hi\"}\n");
    assert!(!ok);
    assert!(
        stderr.contains("line 1") && stderr.contains("\"body\""),
        "{stderr}"
    );
    let (ok, _, stderr) = run_score(&["--jsonl", "text"], "{\"text\": 3}\n");
    assert!(!ok);
    assert!(stderr.contains("not a string"), "{stderr}");
}
