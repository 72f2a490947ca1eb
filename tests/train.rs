//! The training loop end to end on a small model: resume is bit-identical, a NaN loss stops the
//! run without losing the last checkpoint, profiling changes nothing and accounts for every op,
//! and bad inputs give clear errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use baddata::checkpoint;
use baddata::config::ModelConfig;
use baddata::train::{train, RunOptions, TrainConfig};

#[path = "common/fixtures.rs"]
mod fixtures;

fn small_model(vocab_real: usize) -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        d_model: 32,
        n_heads: 2,
        d_ff: 48,
        vocab_size: baddata::config::pad_vocab(vocab_real),
        vocab_real,
        context: 32,
        rope_theta: 10_000.0,
        layer_norm_eps: 1e-5,
        eos_token_id: 0,
        tie_word_embeddings: true,
        clip_qkv: None,
    }
}

fn setup(dir: &Path, vocab: usize) -> TrainConfig {
    fixtures::train_setup(dir, small_model(vocab))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `--profile`: the same losses bit for bit as an unprofiled run, and a profile of exactly the
/// last N steps whose op counts are the model's (per step, with L layers and k micro-batches:
/// 4·L·k matmuls in each direction and for dW, L·k attention calls each way, one output layer
/// forward and backward and one cross-entropy per micro-batch, one norm and one AdamW update).
#[test]
fn profile_changes_nothing_and_counts_every_op() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (cfg_a, cfg_b) = (setup(a.path(), 60), setup(b.path(), 60));
    let plain = train(&cfg_a, &RunOptions::default()).unwrap();
    let opts = RunOptions {
        profile: Some(3),
        ..Default::default()
    };
    let profiled = train(&cfg_b, &opts).unwrap();
    let losses =
        |r: &baddata::train::TrainReport| -> Vec<f32> { r.log.iter().map(|e| e.loss).collect() };
    assert_eq!(bits(&losses(&plain)), bits(&losses(&profiled)));
    assert!(!cfg_a.out.join("profile.json").exists());

    let text = std::fs::read_to_string(cfg_b.out.join("profile.json")).unwrap();
    let p: serde_json::Value = serde_json::from_str(&text).unwrap();
    let steps: Vec<u64> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        vec![cfg_b.steps - 3, cfg_b.steps - 2, cfg_b.steps - 1]
    );
    let ops = p["ops"].as_array().unwrap();
    let calls = |prefix: &str| -> f64 {
        ops.iter()
            .filter(|o| o["op"].as_str().unwrap().split(' ').next() == Some(prefix))
            .map(|o| o["calls_per_step"].as_f64().unwrap())
            .sum()
    };
    let (l, k) = (cfg_b.model.n_layers as f64, cfg_b.grad_accum as f64);
    for op in ["matmul_fwd", "matmul_bwd_x", "matmul_bwd_w"] {
        assert_eq!(calls(op), 4.0 * l * k, "{op}");
    }
    for op in ["attention_fwd", "attention_bwd", "rope_fwd", "rope_bwd"] {
        assert_eq!(calls(op), l * k, "{op}");
    }
    for op in [
        "logits_fwd",
        "logits_bwd",
        "cross_entropy+grad",
        "embedding_fwd",
        "embedding_bwd",
    ] {
        assert_eq!(calls(op), k, "{op}");
    }
    assert_eq!(calls("norm_sq"), 1.0);
    assert_eq!(calls("adamw"), 1.0);
    for o in ops {
        let name = o["op"].as_str().unwrap();
        assert!(o["ms_per_step"].as_f64().unwrap() >= 0.0, "{name}");
        let counted = ["matmul_", "logits_", "attention_fwd", "attention_bwd"];
        let has_flops = counted.iter().any(|c| name.starts_with(c));
        assert_eq!(
            o["tflops"].is_number(),
            has_flops,
            "{name}: {}",
            o["tflops"]
        );
    }
    let md = std::fs::read_to_string(cfg_b.out.join("profile.md")).unwrap();
    assert!(md.contains("| `matmul_fwd "), "{md}");

    // A run resumed inside the profiled range profiles the steps it runs.
    let c = tempfile::tempdir().unwrap();
    let cfg_c = setup(c.path(), 60);
    let stop = RunOptions {
        stop_after: Some(cfg_c.steps - 1),
        ..Default::default()
    };
    train(&cfg_c, &stop).unwrap();
    assert!(!cfg_c.out.join("profile.json").exists());
    let resume = RunOptions {
        resume: Some(cfg_c.out.clone()),
        profile: Some(3),
        ..Default::default()
    };
    train(&cfg_c, &resume).unwrap();
    let text = std::fs::read_to_string(cfg_c.out.join("profile.json")).unwrap();
    let p: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(p["steps"], serde_json::json!([cfg_c.steps - 1]), "{text}");
}

/// A GPU run that cannot fit is refused before anything is allocated, with the numbers and what
/// to change; one that fits passes (olmo-1b at 8 × 2048 needs 62.2 GiB, docs/gpu-results.md).
#[test]
fn device_memory_check_refuses_runs_that_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let gib = 1u64 << 30;
    let mut cfg = setup(dir.path(), 60);
    cfg.model = ModelConfig::preset("olmo-1b").unwrap();
    (cfg.batch, cfg.seq) = (8, 2048);
    baddata::train::check_device_memory(&cfg, 78 * gib, 80 * gib).unwrap();
    let err = baddata::train::check_device_memory(&cfg, 60 * gib, 80 * gib).unwrap_err();
    let msg = format!("{err:#}");
    for want in [
        "needs 62.2 GiB",
        "60.0 GiB free of 80.0 GiB",
        "--batch",
        "--grad-accum",
    ] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    cfg.batch = 16;
    let err = baddata::train::check_device_memory(&cfg, 78 * gib, 80 * gib).unwrap_err();
    assert!(
        format!("{err:#}").contains("batch 16 × seq 2048"),
        "{err:#}"
    );
}

#[test]
fn resume_is_bit_identical_and_loss_falls() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let cfg_a = setup(a.path(), 60);
    let straight = train(&cfg_a, &RunOptions::default()).unwrap();

    let cfg_b = setup(b.path(), 60);
    let first = train(
        &cfg_b,
        &RunOptions {
            stop_after: Some(10),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(first.log.len(), 10);
    let second = train(
        &cfg_b,
        &RunOptions {
            resume: Some(cfg_b.out.clone()),
            ..Default::default()
        },
    )
    .unwrap();

    let la: Vec<f32> = straight.log.iter().map(|e| e.loss).collect();
    let lb: Vec<f32> = second.log.iter().map(|e| e.loss).collect();
    assert_eq!(la.len(), 20);
    assert_eq!(bits(&la), bits(&lb), "losses differ:\n{la:?}\n{lb:?}");
    let pa = checkpoint::load(&cfg_a.out).unwrap();
    let pb = checkpoint::load(&cfg_b.out).unwrap();
    assert_eq!(bits(&pa.params), bits(&pb.params));
    assert!(
        straight.val_last < straight.val_first,
        "validation loss did not fall: {} -> {}",
        straight.val_first,
        straight.val_last
    );
}

#[test]
fn nan_loss_stops_and_keeps_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), 60);
    let err = train(
        &cfg,
        &RunOptions {
            inject_nan_at: Some(7),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("step 7") && err.contains("NaN") && err.contains("step-000005"),
        "{err}"
    );
    let ck = checkpoint::load(&cfg.out).unwrap();
    assert!(ck.dir.ends_with("step-000005"));
    assert!(ck.params.iter().all(|x| x.is_finite()));
    assert!(!cfg.out.join("step-000010").exists());
}

#[test]
fn shard_vocab_larger_than_model_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = setup(d.path(), 60);
    cfg.model = small_model(40);
    let err = train(&cfg, &RunOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("clean.shard") && err.contains("60") && err.contains("40"),
        "{err}"
    );
}

#[test]
fn heads_must_divide_d_model() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = setup(d.path(), 60);
    cfg.model.n_heads = 3;
    let err = train(&cfg, &RunOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("n_heads (3) must divide d_model (32)"),
        "{err}"
    );
}

fn train_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train"))
}

#[test]
fn cli_missing_data_path_is_named() {
    let out = train_bin()
        .args(["--data", "/no/such/corpus", "--quiet", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/corpus") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn cli_config_file_errors_name_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), 60);
    let p: PathBuf = d.path().join("run.json");
    let mut j = serde_json::to_value(&cfg).unwrap();
    j["lerning_rate"] = serde_json::json!(1.0);
    std::fs::write(&p, j.to_string()).unwrap();
    let out = train_bin()
        .args([
            "--config",
            p.to_str().unwrap(),
            "--quiet",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run.json") && err.contains("lerning_rate"),
        "{err}"
    );
}

#[test]
fn cli_cuda_without_gpu_is_a_clear_error() {
    let out = train_bin()
        .args(["--device", "cuda", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
}
