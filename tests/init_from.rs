//! `train --init-from`: continued pretraining from released weights (here the Hugging Face
//! layout fixture shaped like OLMo-1B-0724: bf16 shards, untied head, clip_qkv), with a fresh
//! optimizer and the new run's data.

use std::path::{Path, PathBuf};
use std::process::Command;

use baddata::backend::cpu::Cpu;
use baddata::checkpoint;
use baddata::data::mixture::eval_windows;
use baddata::data::shard::{write_shard, Shard};
use baddata::model::Model;
use baddata::train::{train, RunOptions};

#[path = "common/fixtures.rs"]
mod fixtures;

fn released() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-olmo/untied-clip-bf16-sharded")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The run starts from the released weights (its step-0 validation loss is theirs, computed
/// here directly), trains every tensor including the untied head, writes checkpoints that keep
/// the released shape (untied, clip_qkv), and resumes bit-identically from its own checkpoint.
#[test]
fn continues_from_released_weights_and_resumes() {
    let init = checkpoint::load(&released()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fixtures::train_setup(dir.path(), init.config.clone());
    cfg.init_from = Some(released());
    cfg.steps = 6;
    cfg.save_every = 3;
    cfg.eval_every = 3;
    let rep = train(&cfg, &RunOptions::default()).unwrap();

    // step 0's validation loss is the released model's on the same windows
    let val = Shard::open(&cfg.val).unwrap();
    let n_eval = cfg.eval_windows.div_ceil(cfg.batch) * cfg.batch;
    let windows = eval_windows(&val, n_eval, cfg.seq).unwrap();
    let mut model = Model::new(init.config.clone(), Cpu::<f32>::new()).unwrap();
    let mut total = 0.0;
    let chunks = windows.chunks_exact(cfg.batch * (cfg.seq + 1));
    let k = chunks.len();
    for c in chunks {
        total += model.loss(&init.params, c, cfg.batch, cfg.seq).unwrap();
    }
    let want = (total / k as f64) as f32;
    assert_eq!(
        rep.val_first.to_bits(),
        want.to_bits(),
        "{} vs {want}",
        rep.val_first
    );

    let last = checkpoint::load(&rep.checkpoint).unwrap();
    assert_eq!(last.config, init.config);
    assert!(!last.config.tie_word_embeddings && last.config.clip_qkv == Some(1.25));
    let opt = last.optimizer.as_ref().unwrap();
    assert_eq!(
        opt.step, 6,
        "a fresh optimizer: as many updates as this run's steps"
    );
    assert_eq!(
        opt.no_decay_len,
        init.config.vocab_size * init.config.d_model
    );
    for t in &baddata::model::ParamLayout::new(&last.config).tensors {
        let r = t.range();
        assert!(
            last.params[r.clone()] != init.params[r],
            "{} did not change in training",
            t.name
        );
    }

    // resumed from step 3: the same losses and final weights, bit for bit
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg2 = fixtures::train_setup(dir2.path(), init.config.clone());
    cfg2.init_from = cfg.init_from.clone();
    (cfg2.steps, cfg2.save_every, cfg2.eval_every) = (6, 3, 3);
    let half = RunOptions {
        stop_after: Some(3),
        ..Default::default()
    };
    train(&cfg2, &half).unwrap();
    let rest = RunOptions {
        resume: Some(cfg2.out.clone()),
        ..Default::default()
    };
    let rep2 = train(&cfg2, &rest).unwrap();
    let losses =
        |r: &baddata::train::TrainReport| -> Vec<f32> { r.log.iter().map(|e| e.loss).collect() };
    assert_eq!(bits(&losses(&rep)), bits(&losses(&rep2)));
    let last2 = checkpoint::load(&rep2.checkpoint).unwrap();
    assert_eq!(bits(&last.params), bits(&last2.params));
}

#[test]
fn a_model_config_other_than_the_checkpoints_is_refused() {
    let init = checkpoint::read_config(&released()).unwrap().1;
    let dir = tempfile::tempdir().unwrap();
    let mut other = init.clone();
    other.clip_qkv = None;
    let mut cfg = fixtures::train_setup(dir.path(), other);
    cfg.init_from = Some(released());
    let e = format!("{:#}", train(&cfg, &RunOptions::default()).unwrap_err());
    assert!(e.contains("--init-from") && e.contains("differs"), "{e}");
}

#[test]
fn command_line_takes_the_shape_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, seed) in [("train.shard", 1), ("val.shard", 2)] {
        write_shard(
            &data.join(name),
            &fixtures::counting_text(3000, 96, seed),
            96,
            None,
        )
        .unwrap();
    }
    let out = dir.path().join("run");
    let exe = env!("CARGO_BIN_EXE_train");
    let released = released();
    let base = [
        "--init-from",
        released.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ];
    let o = Command::new(exe).args(base).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("the model shape is the checkpoint's"),
        "{stderr}"
    );
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!(ck.config, checkpoint::read_config(&released).unwrap().1);
    let state: serde_json::Value = ck.state.clone();
    assert_eq!(state["config"]["init_from"], released.to_str().unwrap());
    assert_eq!(
        state["config"]["seq"], 16,
        "seq defaults to the context (at most 2048)"
    );

    // a preset beside it is refused; the demo data is refused (another tokenizer)
    let o = Command::new(exe)
        .args(base)
        .args(["--preset", "olmo-1b"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--preset"), "{e}");
    let o = Command::new(exe)
        .args([
            "--init-from",
            released.to_str().unwrap(),
            "--steps",
            "1",
            "--quiet",
        ])
        .args(["--device", "cpu", "--out"])
        .arg(dir.path().join("demo-run"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && e.contains("tokenized with the checkpoint's tokenizer"),
        "{e}"
    );
}
