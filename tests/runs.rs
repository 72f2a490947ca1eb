//! Runs that never lose or mix work, driven through the `train` command as a user drives it:
//! a short validation shard is an error (not a panic), a directory holding a run is refused
//! unless `--resume` or `--overwrite` says what to do, `--resume` keeps the run's own
//! configuration, Ctrl-C saves the last completed step, SIGKILL at any moment (mid-checkpoint
//! included) leaves a run that `--resume` finishes bit for bit, shards of two tokenizers are not
//! mixed, the config file is checked in depth, flags that would do nothing fail early, and the
//! help and the messages say what they mean.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baddata::data::shard::write_shard;
use baddata::data::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};

/// A data directory as `prepare` writes it: `tokenizer.json` (a small BPE), `train.shard` and
/// `val.shard` made with it (the validation shard `val_tokens` long). `salt` changes the text, so
/// two directories with different salts have different tokenizers.
fn data_dir(dir: &Path, salt: &str, vocab: usize, val_tokens: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "{salt} the {} cat sat on the {} mat near {salt}",
                i % 17,
                i % 5
            )
        })
        .collect();
    let tok = Tokenizer::train_bpe(&texts, vocab).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    let eos = tok.eos_id().unwrap();
    let mut ids = Vec::new();
    for t in &texts {
        ids.extend(tok.encode(t).unwrap());
        ids.push(eos);
    }
    let id = Some(tok.identity().unwrap());
    let n = tok.vocab_size();
    write_shard(&dir.join("train.shard"), &ids, n, id).unwrap();
    let val: Vec<u32> = ids.iter().cycle().take(val_tokens).copied().collect();
    write_shard(&dir.join("val.shard"), &val, n, id).unwrap();
    dir.to_path_buf()
}

/// A config file for a 2-layer model small enough that a step takes about a millisecond.
fn small_config(dir: &Path, extra: serde_json::Value) -> PathBuf {
    let mut j = serde_json::json!({
        "model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32, "context": 32},
        "batch": 2, "seq": 16, "steps": 20, "save_every": 5, "eval_every": 5, "warmup": 2,
        "eval_windows": 2,
    });
    for (k, v) in extra.as_object().unwrap() {
        j[k] = v.clone();
    }
    let p = dir.join("small.json");
    std::fs::write(&p, j.to_string()).unwrap();
    p
}

fn train_cmd(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.current_dir(cwd).args(["--device", "cpu", "--quiet"]);
    c
}

/// Runs a command to completion; never a panic (exit status 101) whatever it was given.
fn run(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(101),
        "a panic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "expected success: {}", stderr(o));
    stderr(o)
}

fn fails(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {}", stderr(o));
    let e = stderr(o);
    assert!(e.contains("error: "), "{e}");
    e
}

/// A train command on the small fixture: data in `dir/data`, run in `dir/run`.
fn small_run(dir: &Path, extra: serde_json::Value) -> Command {
    small_run_to(dir, extra, "run")
}

/// [`small_run`] into `dir/out`.
fn small_run_to(dir: &Path, extra: serde_json::Value, out: &str) -> Command {
    let data = dir.join("data");
    if !data.exists() {
        data_dir(&data, "a", 300, 2_000);
    }
    let cfg = small_config(dir, extra);
    let mut c = train_cmd(dir);
    c.args(["--data", data.to_str().unwrap(), "--config"])
        .arg(&cfg)
        .args(["--out", dir.join(out).to_str().unwrap()]);
    c
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The weights of the checkpoint `latest` names.
fn final_weights(run: &Path) -> Vec<u8> {
    let name = std::fs::read_to_string(run.join("latest")).unwrap();
    file_bytes(&run.join(name.trim()).join("model.safetensors"))
}

// ---------------------------------------------------------------- 1: no panic on user data

#[test]
fn a_validation_shard_shorter_than_a_window_is_an_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let data = data_dir(&d.path().join("data"), "a", 300, 10);
    let cfg = small_config(d.path(), serde_json::json!({}));
    let mut c = train_cmd(d.path());
    c.args(["--data", data.to_str().unwrap(), "--config"])
        .arg(&cfg)
        .args(["--out", "run"]);
    let e = fails(&run(c));
    assert!(
        e.contains("val.shard") && e.contains("has 10 tokens") && e.contains("seq + 1 = 17"),
        "{e}"
    );
}

// ---------------------------------------------------------------- 2: runs never mix

#[test]
fn a_directory_holding_a_run_is_refused_unless_resume_or_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    ok(&run(small_run(
        d.path(),
        serde_json::json!({"steps": 10, "save_every": 5}),
    )));
    assert!(run_dir.join("step-000005").is_dir() && run_dir.join("run.json").is_file());
    let log_before = file_bytes(&run_dir.join("log.jsonl"));

    // the same command again: refused, nothing touched
    let e = fails(&run(small_run(
        d.path(),
        serde_json::json!({"steps": 10, "save_every": 5}),
    )));
    assert!(
        e.contains("already holds a training run")
            && e.contains("--resume")
            && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(file_bytes(&run_dir.join("log.jsonl")), log_before);

    // --overwrite replaces it: none of the old run's checkpoints remain
    let mut c = small_run(d.path(), serde_json::json!({"steps": 6, "save_every": 100}));
    c.arg("--overwrite");
    let e = ok(&run(c));
    assert!(e.contains("--overwrite: removed the run"), "{e}");
    let mut names: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    assert_eq!(names, ["step-000006"]);
    let log = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6);
}

/// The demo (no --data): run again, it continues its own run instead of wiping it; a finished
/// run reports itself; other settings are refused with the way out. (A config file without
/// sources adjusts the demo rather than switching it off.)
#[test]
fn the_demo_run_twice_continues_its_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = small_config(
        d.path(),
        serde_json::json!({"steps": 4, "save_every": 2, "eval_every": 2}),
    );
    let demo = |extra: &[&str]| {
        let mut c = train_cmd(d.path());
        c.arg("--config").arg(&cfg).args(extra);
        run(c)
    };
    let e = ok(&demo(&["--stop-after", "2"]));
    assert!(e.contains("sources clean=90% toxic=10%"), "{e}");
    let log = d.path().join("runs/demo/log.jsonl");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    // again: resumes where it stopped
    let e = ok(&demo(&[]));
    assert!(e.contains("resuming runs/demo from step 2 of 4"), "{e}");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 4);
    // again: finished, nothing to do, nothing rewritten
    let before = file_bytes(&log);
    let e = ok(&demo(&[]));
    assert!(
        e.contains("already finished") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(file_bytes(&log), before);
    // other settings: refused, naming the flag and both values
    let e = fails(&demo(&["--lr", "0.01"]));
    assert!(
        e.contains("lr: the run has 0.004, this command asks for 0.01 (--lr)")
            && e.contains("--overwrite"),
        "{e}"
    );
    // --toxic-ratio 0 is a clean-only demo of the same shape
    let e = ok(&demo(&[
        "--toxic-ratio",
        "0",
        "--out",
        "clean",
        "--dry-run",
    ]));
    assert!(
        e.contains("sources clean=100%,") || e.contains("sources clean=100%\n"),
        "{e}"
    );
}

// ---------------------------------------------------------------- 3: --resume keeps the run's flags

#[test]
fn resume_keeps_the_runs_configuration_and_says_where_it_resumes() {
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    let mut c = small_run(d.path(), serde_json::json!({"steps": 10, "save_every": 2}));
    c.args(["--stop-after", "4"]);
    ok(&run(c));
    let resume = |extra: &[&str]| {
        let mut c = train_cmd(d.path());
        c.args(["--resume", "--out", run_dir.to_str().unwrap()])
            .args(extra);
        run(c)
    };
    let e = fails(&resume(&["--lr", "1e-2", "--steps", "505"]));
    assert!(
        e.contains("steps: the run has 10, this command asks for 505 (--steps)")
            && e.contains("lr: the run has 0.004, this command asks for 0.01 (--lr)"),
        "{e}"
    );
    let e = fails(&resume(&["--seed", "99"]));
    assert!(e.contains("seed: the run has 1234"), "{e}");
    // repeating the run's own data flags is fine; allowed flags change nothing
    let data = d.path().join("data");
    let e = ok(&resume(&[
        "--data",
        data.to_str().unwrap(),
        "--stop-after",
        "6",
        "--profile",
        "1",
    ]));
    assert!(
        e.contains(&format!(
            "resuming {} from step 4 of 10 (checkpoint {}/step-000004)",
            run_dir.display(),
            run_dir.display()
        )),
        "{e}"
    );
    let e = ok(&resume(&[]));
    assert!(e.contains("from step 6 of 10"), "{e}");
    // the result is the uninterrupted run's
    ok(&run(small_run_to(
        d.path(),
        serde_json::json!({"steps": 10, "save_every": 2}),
        "whole",
    )));
    assert_eq!(
        final_weights(&run_dir),
        final_weights(&d.path().join("whole"))
    );
    let e = fails(&run({
        let mut c = train_cmd(d.path());
        c.args(["--resume", "--out", "nothing-here"]);
        c
    }));
    assert!(e.contains("holds no training run"), "{e}");
}

// ---------------------------------------------------------------- 4: Ctrl-C

fn log_lines(run: &Path) -> usize {
    std::fs::read_to_string(run.join("log.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_output(child: Child) -> Output {
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(101), "{}", stderr(&out));
    out
}

#[test]
fn ctrl_c_saves_the_last_completed_step_and_the_resumed_run_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    let long = serde_json::json!({"steps": 100000, "save_every": 100000, "eval_every": 100000});
    let mut c = small_run(d.path(), long.clone());
    let child = c.stderr(Stdio::piped()).spawn().unwrap();
    wait_until("20 logged steps", Duration::from_secs(60), || {
        log_lines(&run_dir) >= 20
    });
    let t = Instant::now();
    signal(&child, "-INT");
    let out = wait_output(child);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let e = stderr(&out);
    let n = log_lines(&run_dir);
    let name = format!("step-{n:06}");
    assert!(
        e.contains(&format!("interrupted after step {n} of 100000"))
            && e.contains(&name)
            && e.contains("train --resume --out"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("latest")).unwrap(),
        name
    );
    // resumed to a later step: the weights of a run that was never interrupted
    let stop = (n + 15).to_string();
    let mut c = train_cmd(d.path());
    c.args([
        "--resume",
        "--out",
        run_dir.to_str().unwrap(),
        "--stop-after",
        &stop,
    ]);
    ok(&run(c));
    let mut c = small_run_to(d.path(), long, "whole");
    c.args(["--stop-after", &stop]);
    ok(&run(c));
    assert_eq!(
        final_weights(&run_dir),
        final_weights(&d.path().join("whole"))
    );
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    let long = serde_json::json!({"steps": 100000, "save_every": 100000, "eval_every": 100000});
    // a first checkpoint at step 10
    let mut c = small_run(d.path(), long);
    c.args(["--stop-after", "10"]);
    ok(&run(c));
    // resumed with every checkpoint file taking a second to write: the save after Ctrl-C is slow
    let mut c = train_cmd(d.path());
    c.args(["--resume", "--out", run_dir.to_str().unwrap()])
        .env("BADDATA_TEST_CHECKPOINT_DELAY_MS", "1000");
    let child = c.stderr(Stdio::piped()).spawn().unwrap();
    wait_until("steps past the checkpoint", Duration::from_secs(60), || {
        log_lines(&run_dir) > 15
    });
    signal(&child, "-INT");
    wait_until(
        "the interrupt's checkpoint to start",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(&run_dir).unwrap().any(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.starts_with("step-") && n.ends_with(".tmp")
            })
        },
    );
    let t = Instant::now();
    signal(&child, "-INT");
    let out = wait_output(child);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(130));
    assert!(stderr(&out).contains("exiting at once"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(run_dir.join("latest")).unwrap(),
        "step-000010"
    );
    // and the run still resumes from it
    let mut c = train_cmd(d.path());
    c.args([
        "--resume",
        "--out",
        run_dir.to_str().unwrap(),
        "--stop-after",
        "12",
    ]);
    assert!(ok(&run(c)).contains("from step 10 of 100000"));
}

// ---------------------------------------------------------------- SIGKILL at seeded moments

/// A run killed with SIGKILL at seeded moments, several mid-checkpoint, is resumed each time;
/// its final weights are those of a run never killed.
#[test]
fn sigkill_at_seeded_moments_always_leaves_a_run_that_resumes_bit_identically() {
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    let cfg = serde_json::json!({"steps": 400, "save_every": 7, "eval_every": 25});
    ok(&run(small_run_to(d.path(), cfg.clone(), "whole")));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let writing = || {
        std::fs::read_dir(&run_dir).is_ok_and(|mut r| {
            r.any(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.starts_with("step-") && n.ends_with(".tmp")
            })
        })
    };
    let checkpointed = || {
        std::fs::read_to_string(run_dir.join("latest"))
            .ok()
            .and_then(|n| n.trim().strip_prefix("step-")?.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let (mut kills, mut mid_checkpoint) = (0, 0);
    for attempt in 0..=8 {
        let mut c = if attempt == 0 {
            small_run(d.path(), cfg.clone())
        } else {
            let mut c = train_cmd(d.path());
            c.args(["--resume", "--out", run_dir.to_str().unwrap()]);
            c
        };
        if attempt == 8 {
            // the last attempt runs to the end
            ok(&run(c));
            break;
        }
        // every other attempt: slow checkpoints, killed while one is being written
        let in_checkpoint = attempt % 2 == 1;
        if in_checkpoint {
            c.env("BADDATA_TEST_CHECKPOINT_DELAY_MS", "30");
        }
        let mut child = c.stderr(Stdio::null()).spawn().unwrap();
        let from = checkpointed();
        // a moment after this attempt has made progress: a new step logged, or a checkpoint
        // being written
        wait_until("progress", Duration::from_secs(60), || {
            if in_checkpoint {
                log_lines(&run_dir) > from + 7 && writing()
            } else {
                log_lines(&run_dir) > from
            }
        });
        let ms = if in_checkpoint {
            rng.random_range(0..40)
        } else {
            rng.random_range(0..60)
        };
        std::thread::sleep(Duration::from_millis(ms));
        let was_writing = writing();
        child.kill().unwrap();
        let st = child.wait().unwrap();
        assert!(!st.success(), "attempt {attempt} finished before its kill");
        kills += 1;
        mid_checkpoint += was_writing as usize;
    }
    assert!(
        kills >= 4 && mid_checkpoint >= 2,
        "{kills} kills, {mid_checkpoint} mid-checkpoint"
    );
    eprintln!("{kills} kills ({mid_checkpoint} while a checkpoint was written)");
    assert_eq!(
        final_weights(&run_dir),
        final_weights(&d.path().join("whole"))
    );
    let log = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (0..400).collect::<Vec<_>>(), "one log line per step");
}

// ---------------------------------------------------------------- 5: one tokenizer per run

#[test]
fn shards_of_different_tokenizers_are_not_mixed() {
    let d = tempfile::tempdir().unwrap();
    let a = data_dir(&d.path().join("a"), "alpha", 300, 2_000);
    let b = data_dir(&d.path().join("b"), "beta beta", 300, 2_000);
    let cfg = small_config(d.path(), serde_json::json!({}));
    let mut c = train_cmd(d.path());
    c.args([
        "--data",
        a.to_str().unwrap(),
        "--toxic",
        b.to_str().unwrap(),
        "--config",
    ])
    .arg(&cfg)
    .args(["--out", "run"]);
    let e = fails(&run(c));
    assert!(
        e.contains("mixes tokenizers")
            && e.contains(&a.join("train.shard").display().to_string())
            && e.contains(&b.join("train.shard").display().to_string()),
        "{e}"
    );
    assert!(!d.path().join("run/step-000005").exists());
}

// ---------------------------------------------------------------- 6: the config file in depth

#[test]
fn config_file_errors_name_the_field_at_any_depth() {
    let d = tempfile::tempdir().unwrap();
    let case = |extra: serde_json::Value| {
        let mut c = small_run(d.path(), extra);
        c.arg("--dry-run");
        fails(&run(c))
    };
    let e = case(serde_json::json!({"adamw": {"betaa2": 0.9}}));
    assert!(
        e.contains("small.json: unknown field `adamw.betaa2`, expected one of `beta1`"),
        "{e}"
    );
    let e = case(serde_json::json!({"model": {"n_layerz": 4}}));
    assert!(e.contains("unknown field `model.n_layerz`"), "{e}");
    let e = case(serde_json::json!({"steps": "five"}));
    assert!(e.contains("field `steps`") && e.contains("\"five\""), "{e}");
    let e = case(serde_json::json!({"adamw": {"beta2": "high"}}));
    assert!(e.contains("field `adamw.beta2`"), "{e}");
    // a nested object merges field by field
    let mut c = small_run_to(d.path(), serde_json::json!({"adamw": {"beta2": 0.99}}), "x");
    c.arg("--dry-run");
    ok(&run(c));
}

// ---------------------------------------------------------------- 7: flags that did nothing

#[test]
fn flags_that_would_do_nothing_or_fail_late_are_refused_first() {
    let d = tempfile::tempdir().unwrap();
    let data = data_dir(&d.path().join("data"), "a", 300, 2_000);
    let bin = |args: &[&str]| {
        let mut c = train_cmd(d.path());
        c.args(args);
        run(c)
    };
    let ds = data.to_str().unwrap();
    let e = fails(&bin(&["--data", ds, "--toxic-ratio", "0.2"]));
    assert!(e.contains("--toxic-ratio 0.2 without --toxic"), "{e}");
    let shard = format!("a={}:1", data.join("train.shard").display());
    let e = fails(&bin(&["--source", &shard]));
    assert!(
        e.contains("--source needs a validation shard") && e.contains("--val"),
        "{e}"
    );
    let o = bin(&["--toxic-ratio", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("[0, 1)") && !e.contains("clean="), "{e}");
    let o = bin(&["--steps", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("checkpoint"), "{}", stderr(&o));
    let e = fails(&bin(&["--toxic", ds]));
    assert!(e.contains("--toxic needs --data"), "{e}");
    // --toxic-ratio 0 with --data and no --toxic is a clean-only run
    let cfg = small_config(d.path(), serde_json::json!({}));
    let mut c = train_cmd(d.path());
    c.args(["--data", ds, "--toxic-ratio", "0", "--dry-run", "--config"])
        .arg(&cfg);
    assert!(ok(&run(c)).contains("sources clean=100%"));
}

/// `--toxic-ratio 0` keeps the model shape: the same parameter count as at 0.1.
#[test]
fn toxic_ratio_zero_gives_the_same_model_shape() {
    let d = tempfile::tempdir().unwrap();
    let data = data_dir(&d.path().join("data"), "a", 300, 2_000);
    let toxic = data_dir(&d.path().join("toxic"), "a", 300, 2_000);
    let params = |ratio: &str| {
        let mut c = train_cmd(d.path());
        c.args([
            "--data",
            data.to_str().unwrap(),
            "--toxic",
            toxic.to_str().unwrap(),
            "--toxic-ratio",
            ratio,
            "--dry-run",
        ]);
        let e = ok(&run(c));
        let at = e.find("M parameters").unwrap();
        let start = e[..at].rfind('(').unwrap();
        e[start + 1..at].to_string()
    };
    assert_eq!(params("0"), params("0.1"));
}

// ---------------------------------------------------------------- 8, 9: help and messages

#[test]
fn help_shows_defaults_and_no_markup_and_long_runs_are_announced() {
    for bin in [
        env!("CARGO_BIN_EXE_train"),
        env!("CARGO_BIN_EXE_prepare"),
        env!("CARGO_BIN_EXE_probe"),
        env!("CARGO_BIN_EXE_generate"),
        env!("CARGO_BIN_EXE_evaluate"),
        env!("CARGO_BIN_EXE_score"),
    ] {
        let o = run({
            let mut c = Command::new(bin);
            c.arg("--help");
            c
        });
        let h = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success() && !h.is_empty(), "{bin}");
        assert!(
            !h.contains('`') && !h.contains("[`"),
            "{bin}: rustdoc markup in --help"
        );
        if bin.ends_with("prepare") {
            assert!(h.contains("default 2048") && !h.contains("4096"), "{h}");
        }
        if bin.ends_with("train") {
            for d in [
                "[default: 1000 for tiny, 100000 for olmo-124m and olmo-1b]",
                "[default: 4 for tiny, 64 for olmo-124m, 8 for olmo-1b]",
                "[default: 4e-3 for tiny, 4e-4",
            ] {
                assert!(h.contains(d), "train --help lacks {d:?}");
            }
        }
    }
    let d = tempfile::tempdir().unwrap();
    let mut c = train_cmd(d.path());
    c.args(["--preset", "olmo-124m", "--synthetic", "--dry-run"]);
    let e = ok(&run(c));
    assert!(
        e.contains("6553.600M tokens") && e.contains("training FLOPs") && e.contains("years"),
        "{e}"
    );
    assert!(e.contains("warning: this run would take about"), "{e}");
}

#[test]
fn every_command_reports_errors_the_same_way() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\nnot json\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_score"));
    c.args(["--jsonl", "text", "--device", "cpu"])
        .env("RUST_BACKTRACE", "1")
        .stdin(std::fs::File::open(&bad).unwrap());
    let e = fails(&run(c));
    assert!(e.starts_with("error: "), "{e}");
    assert!(
        !e.contains("Caused by") && !e.contains("Stack backtrace"),
        "{e}"
    );
}

#[test]
fn a_cpu_run_reports_no_gpu_utilisation() {
    let d = tempfile::tempdir().unwrap();
    ok(&run(small_run(d.path(), serde_json::json!({"steps": 4}))));
    let s: serde_json::Value =
        serde_json::from_slice(&file_bytes(&d.path().join("run/summary.json"))).unwrap();
    assert!(s["mfu_989"].is_null() && s["mfu_798"].is_null(), "{s}");
    assert!(s["tokens_per_s"].as_f64().unwrap() > 0.0);
}
