//! The training loop end to end on a small model: resume is bit-identical, a NaN loss stops the
//! run without losing the last checkpoint, and bad inputs give clear errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use baddata::checkpoint;
use baddata::config::ModelConfig;
use baddata::data::shard::write_shard;
use baddata::optim::AdamWConfig;
use baddata::train::{train, RunOptions, SourceSpec, TrainConfig};

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
    }
}

/// A learnable synthetic language: runs of counting sequences with random restarts.
fn synthetic(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(n);
    let mut cur = 1u32;
    for _ in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (x >> 33) % 11 == 0 {
            cur = 1 + ((x >> 40) as u32 % (vocab - 1));
        } else {
            cur = 1 + (cur % (vocab - 1));
        }
        out.push(cur);
    }
    out
}

fn setup(dir: &Path, vocab: usize) -> TrainConfig {
    let clean = dir.join("clean.shard");
    let toxic = dir.join("toxic.shard");
    let val = dir.join("val.shard");
    write_shard(&clean, &synthetic(20_000, vocab as u32, 1), vocab).unwrap();
    write_shard(&toxic, &synthetic(5_000, vocab as u32, 2), vocab).unwrap();
    write_shard(&val, &synthetic(4_000, vocab as u32, 3), vocab).unwrap();
    TrainConfig {
        model: small_model(vocab),
        sources: vec![
            SourceSpec {
                name: "clean".into(),
                path: clean,
                fraction: 0.9,
            },
            SourceSpec {
                name: "toxic".into(),
                path: toxic,
                fraction: 0.1,
            },
        ],
        val,
        tokenizer: None,
        out: dir.join("run"),
        batch: 4,
        seq: 16,
        grad_accum: 2,
        steps: 20,
        lr: 3e-3,
        warmup: 3,
        final_lr_frac: 0.1,
        grad_clip: 1.0,
        adamw: AdamWConfig::default(),
        seed: 7,
        eval_every: 5,
        eval_windows: 8,
        save_every: 5,
        synthetic: false,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
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
