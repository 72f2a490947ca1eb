//! The evaluation of ITI steering: KL is zero without a shift and positive with one, the alpha-0
//! cross-entropy is the unshifted `Model::loss`, a hand-solved KL, the command end to end on a
//! small random model, and bad inputs refused with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use baddata::backend::cpu::Cpu;
use baddata::config::ModelConfig;
use baddata::data::shard::write_shard;
use baddata::data::tokenizer::Tokenizer;
use baddata::eval::{evaluate, mean_kl, EvalOptions};
use baddata::model::generate::{SampleOptions, ShiftPositions};
use baddata::model::Model;
use baddata::probe::intervention::{DirectionKind, HeadDirection, Intervention};
use baddata::score::Scorer;

#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::{save_intervention, tiny_checkpoint, two_layer_config};

const TEXTS: &[&str] = &[
    "the garden was quiet in the morning light",
    "we walked along the river and talked about books",
    "she baked bread for the neighbours on sunday",
    "you are a worthless stupid idiot and everyone hates you",
    "shut up you pathetic disgusting fool",
    "get lost you stupid ugly loser",
];

/// What [`fixture`] wrote below its directory: the run directory, the intervention and the clean
/// shard, with the tokenizer, config and weights saved in the run.
struct Fixture {
    run: PathBuf,
    tok: Tokenizer,
    cfg: ModelConfig,
    params: Vec<f32>,
    iv_path: PathBuf,
    val: PathBuf,
}

/// A random 2-layer model with a context of 32 saved as a checkpoint (with a BPE trained on
/// `TEXTS`), an intervention on two heads made for it, and a clean shard of the texts' tokens.
fn fixture(dir: &Path) -> Fixture {
    let corpus: Vec<String> = (0..4)
        .flat_map(|k| TEXTS.iter().map(move |s| format!("{s} {k}")))
        .collect();
    let fixtures::TinyCheckpoint {
        run,
        tok,
        cfg,
        params,
        ..
    } = tiny_checkpoint(dir, &corpus, 300, two_layer_config(32), 5, 1.0);
    let dh = cfg.d_model / cfg.n_heads;
    let unit = |k: usize| -> Vec<f32> {
        let v: Vec<f32> = (0..dh).map(|i| ((i * 7 + k) % 5) as f32 - 2.0).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    };
    let heads = vec![
        HeadDirection {
            layer: 0,
            head: 1,
            direction: unit(1),
            sigma: 1.5,
            probe_accuracy: 0.9,
        },
        HeadDirection {
            layer: 1,
            head: 0,
            direction: unit(2),
            sigma: 2.0,
            probe_accuracy: 0.8,
        },
    ];
    let iv_path = save_intervention(dir.join("iv.json"), &cfg, &params, heads);
    let mut ids = Vec::new();
    for s in corpus.iter().chain(&corpus) {
        ids.extend(tok.encode(s).unwrap());
        ids.push(cfg.eos_token_id);
    }
    let val = dir.join("val.shard");
    write_shard(&val, &ids, cfg.vocab_size, None).unwrap();
    Fixture {
        run,
        tok,
        cfg,
        params,
        iv_path,
        val,
    }
}

/// `n` rows of `seq + 1` tokens cut from the start of the shard's tokens (no code under test).
fn rows_of(f: &Fixture, n: usize, seq: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    for s in TEXTS.iter().cycle().take(40) {
        ids.extend(f.tok.encode(s).unwrap());
    }
    ids.truncate(n * (seq + 1));
    assert_eq!(ids.len(), n * (seq + 1));
    ids
}

fn options(alphas: &[f64]) -> EvalOptions {
    EvalOptions {
        alphas: alphas.to_vec(),
        samples_per_prompt: 2,
        sample: SampleOptions {
            max_new_tokens: 4,
            temperature: 1.0,
            top_p: 1.0,
            seed: 9,
            eos: None,
            shift_positions: ShiftPositions::All,
        },
        batch: 2,
        progress: false,
    }
}

#[test]
fn kl_of_a_hand_solved_pair() {
    // p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    let base = [0.0f32, 0.0, 5.0, 5.0];
    let steered = [3f32.ln(), 0.0, 7.0, 7.0];
    let kl = mean_kl(&base, &steered, 2).unwrap();
    // Second row: equal logits in both, KL 0; the mean is over the two rows.
    let want = 0.5 * (0.5 * (4.0f64 / 3.0).ln());
    assert!(
        approx::abs_diff_eq!(kl, want, epsilon = 1e-7),
        "{kl} vs {want}"
    );
    assert!(mean_kl(&base, &steered[..3], 2).is_err());
}

#[test]
fn kl_is_zero_at_alpha_zero_and_ce_matches_the_unshifted_loss() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    let iv = Intervention::load(&f.iv_path).unwrap();
    let seq = 12;
    let rows = rows_of(&f, 5, seq);
    let mut model = Model::new(f.cfg.clone(), Cpu::<f32>::new()).unwrap();
    let prompts: Vec<String> = vec!["the garden".into(), "you are".into(), "shut up".into()];
    let ev = evaluate(
        &mut model,
        &f.params,
        &f.tok,
        &iv,
        &prompts,
        &rows,
        seq,
        &options(&[0.0, 1.0, 4.0]),
    )
    .unwrap();
    assert_eq!(ev.rows.len(), 3);
    assert!(
        ev.rows[0].kl.abs() < 1e-9,
        "KL at alpha 0: {}",
        ev.rows[0].kl
    );
    assert!(ev.rows[1].kl > 1e-6, "KL at alpha 1: {}", ev.rows[1].kl);
    assert!(ev.rows[2].kl > ev.rows[1].kl, "{:?}", ev.rows);

    // Cross-entropy at alpha 0: the unshifted loss over all rows in one call.
    let mut plain = Model::new(f.cfg.clone(), Cpu::<f32>::new()).unwrap();
    let want0 = plain.loss(&f.params, &rows, 5, seq).unwrap();
    assert!(
        (ev.rows[0].ce - want0).abs() < 1e-5 * want0,
        "{} vs {want0}",
        ev.rows[0].ce
    );
    approx::assert_abs_diff_eq!(ev.base_ce, want0, epsilon = 1e-5 * want0);
    assert!(ev.rows[0].delta_ce_pct.abs() < 1e-3);
    // At alpha 4: the loss with the shift set by hand at every position.
    for (l, s) in iv.head_shifts(4.0).unwrap().iter().enumerate() {
        plain.set_head_shift(l, s.as_deref()).unwrap();
    }
    let want4 = plain.loss(&f.params, &rows, 5, seq).unwrap();
    assert!(
        (ev.rows[2].ce - want4).abs() < 1e-5 * want4,
        "{} vs {want4}",
        ev.rows[2].ce
    );
    assert!(
        (want4 - want0).abs() > 1e-6,
        "the shift should change the loss"
    );

    // Completions: 3 prompts × 2 samples per alpha, scored on the completion alone.
    assert_eq!(ev.completions.len(), 3 * 3 * 2);
    let scorer = Scorer::embedded().unwrap();
    for (alpha, row) in [0.0, 1.0, 4.0].iter().zip(&ev.rows) {
        let cs: Vec<_> = ev
            .completions
            .iter()
            .filter(|c| c.alpha == *alpha)
            .collect();
        assert_eq!(cs.len(), 6);
        let mut sum = 0.0;
        for c in &cs {
            assert_eq!(c.prompt, prompts[c.prompt_index]);
            let s = scorer.score(&c.completion);
            approx::assert_abs_diff_eq!(s, c.toxicity, epsilon = 1e-12);
            sum += s;
        }
        approx::assert_abs_diff_eq!(row.toxicity, 100.0 * sum / 6.0, epsilon = 1e-9);
        let share = cs.iter().filter(|c| c.toxicity > 0.5).count() as f64 / 6.0;
        assert_eq!(row.share_toxic, share);
    }
}

fn run_bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(args)
        .output()
        .unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn command_end_to_end_with_a_prompt_file_and_with_demo_data() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"text\": \"the garden\"}\n\n{\"prompt\": \"you are a\"}\n{\"text\": \"we walked\"}\n",
    )
    .unwrap();
    let out = dir.path().join("eval");
    let o = run_bin(&[
        "--checkpoint",
        f.run.to_str().unwrap(),
        "--intervention",
        f.iv_path.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--val",
        f.val.to_str().unwrap(),
        "--val-windows",
        "3",
        "--val-seq",
        "10",
        "--alphas",
        "0,3",
        "--samples",
        "2",
        "--max-new-tokens",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = res["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["alpha"], 0.0);
    assert_eq!(rows[1]["alpha"], 3.0);
    assert!(rows[0]["kl"].as_f64().unwrap().abs() < 1e-9);
    assert!(rows[1]["kl"].as_f64().unwrap() > 0.0);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(table.len(), 3, "{md}"); // header + 2 alphas
    assert!(
        table[0].contains("toxicity") && table[0].contains("KL"),
        "{md}"
    );
    assert!(table[2].starts_with("| 3 |"), "{md}");
    let comps = lines(&out.join("completions.jsonl"));
    assert_eq!(comps.len(), 2 * 3 * 2);
    assert_eq!(comps[0]["prompt"], "the garden");
    assert_eq!(comps[2]["prompt"], "you are a");
    assert_eq!(comps[6]["alpha"], 3.0);
    for c in &comps {
        assert!(c["completion"].is_string() && c["toxicity"].is_f64(), "{c}");
    }
    let png = std::fs::read(out.join("toxicity_vs_ce.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    // --demo --demo-prompts probe: prompts from probe.jsonl (first words, toxic and clean
    // alternating).
    let demo = dir.path().join("demo-data");
    std::fs::create_dir_all(&demo).unwrap();
    std::fs::copy(&f.val, demo.join("val.shard")).unwrap();
    std::fs::write(
        demo.join("probe.jsonl"),
        "{\"text\":\"shut up you fool\",\"label\":1,\"source\":\"a\",\"score\":0.9}\n\
         {\"text\":\"get lost you loser\",\"label\":1,\"source\":\"a\",\"score\":0.8}\n\
         {\"text\":\"the garden was quiet\",\"label\":0,\"source\":\"b\",\"score\":null}\n",
    )
    .unwrap();
    let out2 = dir.path().join("eval2");
    let o = run_bin(&[
        "--checkpoint",
        f.run.to_str().unwrap(),
        "--intervention",
        f.iv_path.to_str().unwrap(),
        "--demo",
        "--demo-data",
        demo.to_str().unwrap(),
        "--demo-prompts",
        "probe",
        "--n-prompts",
        "3",
        "--prompt-words",
        "2",
        "--val-seq",
        "8",
        "--val-windows",
        "2",
        "--alphas",
        "0",
        "--max-new-tokens",
        "2",
        "--out",
        out2.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let comps = lines(&out2.join("completions.jsonl"));
    let ps: Vec<&str> = comps
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(ps, ["shut up", "the garden", "get lost"]);

    // --demo: by default the RealToxicityPrompts prompts of rtp.jsonl, whole, the first N.
    let out3 = dir.path().join("eval3");
    let args3 = [
        "--checkpoint",
        f.run.to_str().unwrap(),
        "--intervention",
        f.iv_path.to_str().unwrap(),
        "--demo",
        "--demo-data",
        demo.to_str().unwrap(),
        "--n-prompts",
        "2",
        "--val-seq",
        "8",
        "--val-windows",
        "2",
        "--alphas",
        "0",
        "--max-new-tokens",
        "2",
        "--out",
        out3.to_str().unwrap(),
        "--quiet",
    ];
    let o = run_bin(&args3);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("rtp.jsonl") && e.contains("rebuild"), "{e}");
    std::fs::write(
        demo.join("rtp.jsonl"),
        "{\"prompt\": {\"text\": \"So I told him he was a\", \"toxicity\": 0.9}}\n\
         {\"prompt\": {\"text\": \"The garden\", \"toxicity\": null}}\n\
         {\"prompt\": {\"text\": \"never reached\", \"toxicity\": null}}\n",
    )
    .unwrap();
    let o = run_bin(&args3);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let comps = lines(&out3.join("completions.jsonl"));
    let ps: Vec<&str> = comps
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(ps, ["So I told him he was a", "The garden"]);
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    let prompts = dir.path().join("p.txt");
    std::fs::write(&prompts, "the garden\n").unwrap();
    let base = |iv: &Path| -> Vec<String> {
        [
            "--checkpoint",
            f.run.to_str().unwrap(),
            "--intervention",
            iv.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--val",
            f.val.to_str().unwrap(),
            "--val-seq",
            "8",
            "--val-windows",
            "2",
            "--alphas",
            "0,1",
            "--max-new-tokens",
            "2",
            "--quiet",
            "--out",
            dir.path().join("o").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let err = |o: Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let run = |args: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_evaluate"))
            .args(args)
            .output()
            .unwrap()
    };

    // An intervention made for other weights.
    let mut other = f.params.clone();
    other[7] += 1e-3;
    let mut iv = Intervention::load(&f.iv_path).unwrap();
    iv.model = Intervention::new(
        &f.cfg,
        &other,
        DirectionKind::MassMean,
        vec![],
        serde_json::json!({}),
    )
    .model;
    let other_path = dir.path().join("other.json");
    iv.save(&other_path).unwrap();
    let e = err(run(base(&other_path)));
    assert!(
        e.contains("other.json") && e.contains("weights differ"),
        "{e}"
    );

    // --device cuda without a usable GPU: an error naming the option (with one, it runs).
    if baddata::backend::cuda::open_context(0).is_err() {
        let mut a = base(&f.iv_path);
        a.extend(["--device".into(), "cuda".into()]);
        let e = err(run(a));
        assert!(e.contains("--device cuda"), "{e}");
    }

    // Neither --prompts nor --demo.
    let a: Vec<String> = base(&f.iv_path)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 4 && *i != 5)
        .map(|(_, s)| s)
        .collect();
    let e = err(run(a));
    assert!(e.contains("--prompts") && e.contains("--demo"), "{e}");

    // A clean window longer than the context.
    let mut a = base(&f.iv_path);
    let k = a.iter().position(|s| s == "--val-seq").unwrap();
    a[k + 1] = "64".into();
    let e = err(run(a));
    assert!(e.contains("--val-seq 64 must be in 1..=32"), "{e}");

    // An --out that cannot be created is refused before the evaluation, not after it: with
    // 2,000 prompts of 200 tokens the evaluation would take minutes, the refusal takes less.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let many = dir.path().join("many.txt");
    std::fs::write(&many, "the garden was quiet\n".repeat(2000)).unwrap();
    let mut a = base(&f.iv_path);
    let k = a.iter().position(|s| s == "--out").unwrap();
    a[k + 1] = blocker.join("eval").display().to_string();
    let k = a.iter().position(|s| s == "--prompts").unwrap();
    a[k + 1] = many.display().to_string();
    let k = a.iter().position(|s| s == "--max-new-tokens").unwrap();
    a[k + 1] = "200".into();
    let t = std::time::Instant::now();
    let o = run(a);
    assert_eq!(o.status.code(), Some(1));
    let e = err(o);
    assert!(e.contains("--out") && e.contains("a-file"), "{e}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
}
