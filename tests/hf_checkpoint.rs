//! Released Hugging Face OLMo v1 checkpoints: the loader (single or sharded safetensors,
//! f32 / bf16 / f16, untied head, clip_qkv) against reference logits, its errors, and the
//! commands that read checkpoints.
//!
//! - `tests/fixtures/hf-olmo/`, written by `tools/hf_olmo_fixture.py` in HF's layout: a
//!   bf16, untied, clip_qkv checkpoint in 4 shards with an index (OLMo-1B-0724-hf's shape) and an
//!   f32 tied single-file one (OLMo-1B-hf's), each with the logits of an independent float64
//!   numpy forward pass of HF's OLMo math. Our CPU logits must match them: ‖ours − ref‖/‖ref‖
//!   under 1e-10 in f64 and 1e-5 in f32.
//! - Checkpoints written here with the `safetensors` crate (f16, and damaged copies of the
//!   fixtures) for the error paths: a missing shard, an index naming a missing tensor, a shape
//!   mismatch, config fields we do not implement, an unexpected tensor, arbitrary bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use baddata::backend::cpu::Cpu;
use baddata::checkpoint;
use baddata::config::ModelConfig;
use baddata::data::shard::write_shard;
use baddata::model::{init_params, Model, ParamLayout};
use baddata::weights;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

#[path = "common/fixtures.rs"]
mod fixtures;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-olmo")
        .join(name)
}

/// A copy of the fixture `name` in `dir` (to damage).
fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    fs::create_dir_all(&to).unwrap();
    for e in fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}

/// `ids` `[B, T]` and `logits` `[B, T, V]` from a fixture's reference.safetensors.
fn reference(dir: &Path) -> (Vec<u32>, usize, usize, Vec<f64>) {
    let bytes = fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("ids").unwrap();
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let ids = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids, b, t, logits)
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n).sqrt()
}

/// Our logits of `cfg` with `params` on `ids`, in f64 and in f32.
fn our_logits(cfg: &ModelConfig, params: &[f32], ids: &[u32], b: usize, t: usize) -> [Vec<f64>; 2] {
    let p64: Vec<f64> = params.iter().map(|&x| x as f64).collect();
    let mut m64 = Model::new(cfg.clone(), Cpu::<f64>::new()).unwrap();
    let l64 = m64.logits_exact(&p64, ids, b, t).unwrap();
    let mut m32 = Model::new(cfg.clone(), Cpu::<f32>::new()).unwrap();
    let l32 = m32.logits(&params.to_vec(), ids, b, t).unwrap();
    [l64, l32.iter().map(|&x| x as f64).collect()]
}

#[test]
fn released_layouts_load_and_match_reference_logits() {
    for (name, tied, clip) in [
        ("untied-clip-bf16-sharded", false, Some(1.25)),
        ("tied-f32-single", true, None),
    ] {
        let dir = fixture(name);
        let ck = checkpoint::load(&dir).unwrap();
        assert_eq!(ck.config.tie_word_embeddings, tied, "{name}");
        assert_eq!(ck.config.clip_qkv, clip, "{name}");
        assert_eq!(ck.config.rope_theta, 20_000.0, "{name}");
        assert!(ck.optimizer.is_none());
        let (ids, b, t, want) = reference(&dir);
        let [l64, l32] = our_logits(&ck.config, &ck.params, &ids, b, t);
        let (e64, e32) = (rel(&l64, &want), rel(&l32, &want));
        eprintln!("{name}: rel error f64 {e64:.2e}, f32 {e32:.2e}");
        assert!(
            e64 < 1e-10,
            "{name}: f64 logits off the reference by {e64:e}"
        );
        assert!(
            e32 < 1e-5,
            "{name}: f32 logits off the reference by {e32:e}"
        );
        // each feature changes the logits far beyond the tolerance: the check would see it missing
        if let Some(c) = clip {
            let unclipped = ModelConfig {
                clip_qkv: None,
                ..ck.config.clone()
            };
            let [u, _] = our_logits(&unclipped, &ck.params, &ids, b, t);
            assert!(rel(&u, &want) > 1e-2, "clip_qkv {c} changes nothing here");
        }
        if !tied {
            let as_tied = ModelConfig {
                tie_word_embeddings: true,
                ..ck.config.clone()
            };
            let n = ParamLayout::new(&as_tied).len();
            let [u, _] = our_logits(&as_tied, &ck.params[..n], &ids, b, t);
            assert!(
                rel(&u, &want) > 1e-1,
                "the untied head changes nothing here"
            );
        }
    }
}

/// What `tools/hf_olmo_fixture.py` stored is read exactly: every bf16 value widened exactly.
#[test]
fn bf16_shards_are_read_exactly() {
    let dir = fixture("untied-clip-bf16-sharded");
    let ck = checkpoint::load(&dir).unwrap();
    let layout = ParamLayout::new(&ck.config);
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join(weights::INDEX_FILE)).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), layout.tensors.len());
    let mut shards: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    shards.sort();
    shards.dedup();
    assert_eq!(shards.len(), 4, "the fixture is sharded");
    for t in &layout.tensors {
        let bytes = fs::read(dir.join(map[&t.name].as_str().unwrap())).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.dtype(), Dtype::BF16);
        for (i, c) in v.data().chunks_exact(2).enumerate() {
            let want = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            assert_eq!(
                ck.params[t.offset + i].to_bits(),
                want.to_bits(),
                "{}[{i}]",
                t.name
            );
        }
    }
}

/// Writes `params` of `cfg` as HF does: `config.json` (HF field names, no `baddata` section) and
/// the weights in `dtype` (F32, BF16 or F16), in one `model.safetensors` or, with `shard_bytes`,
/// in shards of at most that many bytes plus the index. `extra` tensors are added (f32).
fn write_hf(
    dir: &Path,
    cfg: &ModelConfig,
    params: &[f32],
    dtype: Dtype,
    shard_bytes: Option<usize>,
    extra: &[(&str, Vec<usize>, Vec<f32>)],
) {
    fs::create_dir_all(dir).unwrap();
    let mut hf = cfg.to_hf_config();
    hf.as_object_mut().unwrap().remove("baddata");
    fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&hf).unwrap(),
    )
    .unwrap();
    let layout = ParamLayout::new(cfg);
    let encode = |x: &[f32], dt: Dtype| -> Vec<u8> {
        match dt {
            Dtype::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::BF16 => x
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => x
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    };
    let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = layout
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.shape.clone(),
                dtype,
                encode(&params[t.range()], dtype),
            )
        })
        .collect();
    for (n, shape, v) in extra {
        tensors.push((
            n.to_string(),
            shape.clone(),
            Dtype::F32,
            encode(v, Dtype::F32),
        ));
    }
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, t) in tensors.iter().enumerate() {
        let last = groups.last_mut().unwrap();
        if shard_bytes.is_some_and(|m| !last.is_empty() && size + t.3.len() > m) {
            groups.push(vec![i]);
            size = t.3.len();
        } else {
            last.push(i);
            size += t.3.len();
        }
    }
    let write = |path: &Path, idx: &[usize]| {
        let views: Vec<(String, TensorView)> = idx
            .iter()
            .map(|&i| {
                let (n, s, dt, b) = &tensors[i];
                (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap())
            })
            .collect();
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), path).unwrap();
    };
    if shard_bytes.is_none() {
        write(&dir.join(weights::SINGLE_FILE), &groups[0]);
        return;
    }
    let mut map = serde_json::Map::new();
    for (k, g) in groups.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, groups.len());
        write(&dir.join(&name), g);
        for &i in g {
            map.insert(tensors[i].0.clone(), name.clone().into());
        }
    }
    let total: usize = tensors.iter().map(|t| t.3.len()).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    fs::write(dir.join(weights::INDEX_FILE), index.to_string()).unwrap();
}

fn small_cfg(tied: bool, clip: Option<f64>) -> ModelConfig {
    ModelConfig {
        tie_word_embeddings: tied,
        clip_qkv: clip,
        vocab_size: 64,
        vocab_real: 64,
        eos_token_id: 3,
        ..fixtures::two_layer_config(16)
    }
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn f16_and_f32_files_written_here_load_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_cfg(false, Some(2.0));
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 3);
    for (dt, shards) in [(Dtype::F16, Some(20_000)), (Dtype::F32, None)] {
        let d = dir.path().join(format!("{dt:?}"));
        write_hf(&d, &cfg, &params, dt, shards, &[]);
        let ck = checkpoint::load(&d).unwrap();
        assert_eq!(ck.config, cfg);
        let want: Vec<f32> = match dt {
            Dtype::F16 => params
                .iter()
                .map(|v| half::f16::from_f32(*v).to_f32())
                .collect(),
            _ => params.clone(),
        };
        assert!(ck
            .params
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// Our own checkpoints of an untied, clipped model round-trip (config.json says so, the head is
/// saved as lm_head.weight), and tied ones write exactly what they wrote before.
#[test]
fn our_checkpoints_of_untied_clipped_models_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_cfg(false, Some(8.0));
    let layout = ParamLayout::new(&cfg);
    let params = init_params(&cfg, &layout, 9);
    let opt = baddata::optim::AdamW::new(Default::default(), params.len(), 64 * 32);
    let ck_dir = checkpoint::save(
        dir.path(),
        3,
        &cfg,
        &params,
        &opt,
        &serde_json::json!({}),
        None,
    )
    .unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ck_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(hf["tie_word_embeddings"], false);
    assert_eq!(hf["clip_qkv"], 8.0);
    let ck = checkpoint::load(dir.path()).unwrap();
    assert_eq!(ck.config, cfg);
    assert_eq!(ck.params, params);
    let bytes = fs::read(ck_dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("lm_head.weight").unwrap().shape(), &[64, 32]);
    // tied: the same config.json keys and values as before the untied head existed
    let tied = small_cfg(true, None).to_hf_config();
    assert_eq!(tied["tie_word_embeddings"], true);
    assert!(tied["clip_qkv"].is_null());
}

#[test]
fn damaged_checkpoints_give_errors_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "untied-clip-bf16-sharded";
    let index_of = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(d.join(weights::INDEX_FILE)).unwrap()).unwrap()
    };

    // a missing shard
    let d = copy_fixture(name, &tmp.path().join("a"));
    fs::remove_file(d.join("model-00003-of-00004.safetensors")).unwrap();
    let e = err_of(checkpoint::load(&d));
    assert!(
        e.contains("model-00003-of-00004.safetensors")
            && e.contains("does not exist")
            && e.contains(weights::INDEX_FILE),
        "{e}"
    );

    // the index places a tensor in a shard that does not hold it
    let d = copy_fixture(name, &tmp.path().join("b"));
    let mut index = index_of(&d);
    let t = "model.layers.1.mlp.up_proj.weight";
    let holder = index["weight_map"][t].as_str().unwrap().to_string();
    let other = if holder.contains("00001") {
        "model-00002-of-00004.safetensors"
    } else {
        "model-00001-of-00004.safetensors"
    };
    index["weight_map"][t] = other.into();
    fs::write(d.join(weights::INDEX_FILE), index.to_string()).unwrap();
    let e = err_of(checkpoint::load(&d));
    assert!(
        e.contains(other) && e.contains(t) && e.contains("holds no tensor"),
        "{e}"
    );

    // the index leaves a tensor out
    let d = copy_fixture(name, &tmp.path().join("c"));
    let mut index = index_of(&d);
    index["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("model.layers.0.self_attn.k_proj.weight");
    fs::write(d.join(weights::INDEX_FILE), index.to_string()).unwrap();
    let e = err_of(checkpoint::load(&d));
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight") && e.contains("missing"),
        "{e}"
    );

    // a shape mismatch: config.json says a wider MLP than the tensors have
    let d = copy_fixture(name, &tmp.path().join("d"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 40.into();
    fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let e = err_of(checkpoint::load(&d));
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[48, 32]")
            && e.contains("[40, 32]")
            && e.contains(".safetensors"),
        "{e}"
    );

    // untied in config.json, no lm_head.weight in the files
    let d = copy_fixture("tied-f32-single", &tmp.path().join("e"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("tie_word_embeddings");
    fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let e = err_of(checkpoint::load(&d));
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );

    // not a safetensors file
    let d = copy_fixture(name, &tmp.path().join("f"));
    fs::write(
        d.join("model-00002-of-00004.safetensors"),
        b"not safetensors",
    )
    .unwrap();
    let e = err_of(checkpoint::load(&d));
    assert!(
        e.contains("model-00002-of-00004.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    // a shard path outside the directory
    let d = copy_fixture(name, &tmp.path().join("g"));
    let mut index = index_of(&d);
    index["weight_map"]["lm_head.weight"] = "../x.safetensors".into();
    fs::write(d.join(weights::INDEX_FILE), index.to_string()).unwrap();
    let e = err_of(checkpoint::load(&d));
    assert!(
        e.contains("../x.safetensors") && e.contains("file name"),
        "{e}"
    );
}

#[test]
fn unexpected_tensors_and_tied_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small_cfg(true, None);
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 4);
    let (v, d) = (cfg.vocab_size, cfg.d_model);
    // a layernorm weight: another architecture
    let p = tmp.path().join("ln");
    write_hf(
        &p,
        &cfg,
        &params,
        Dtype::F32,
        Some(30_000),
        &[("model.norm.weight", vec![d], vec![1.0; d])],
    );
    let e = err_of(checkpoint::load(&p));
    assert!(
        e.contains("model.norm.weight") && e.contains("not a weight"),
        "{e}"
    );
    // a rotary buffer of an older export: ignored
    let p = tmp.path().join("inv");
    let inv = vec![1.0; 8];
    write_hf(
        &p,
        &cfg,
        &params,
        Dtype::F32,
        None,
        &[("model.layers.0.self_attn.rotary_emb.inv_freq", vec![8], inv)],
    );
    assert_eq!(checkpoint::load(&p).unwrap().params, params);
    // tied, with lm_head.weight an exact copy of the embedding: accepted
    let embed = params[..v * d].to_vec();
    let p = tmp.path().join("copy");
    write_hf(
        &p,
        &cfg,
        &params,
        Dtype::F32,
        None,
        &[("lm_head.weight", vec![v, d], embed.clone())],
    );
    assert_eq!(checkpoint::load(&p).unwrap().params, params);
    // tied, with a different lm_head.weight: refused
    let mut other = embed;
    other[v * d - 1] += 1.0;
    let p = tmp.path().join("differs");
    write_hf(
        &p,
        &cfg,
        &params,
        Dtype::F32,
        Some(30_000),
        &[("lm_head.weight", vec![v, d], other)],
    );
    let e = err_of(checkpoint::load(&p));
    assert!(
        e.contains("lm_head.weight") && e.contains("differs") && e.contains("row 63"),
        "{e}"
    );
}

#[test]
fn config_fields_we_do_not_implement_are_errors_naming_the_field() {
    let base: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(fixture("untied-clip-bf16-sharded").join("config.json")).unwrap(),
    )
    .unwrap();
    assert!(ModelConfig::from_hf_config(&base).is_ok());
    let cases: [(&str, serde_json::Value); 10] = [
        ("attention_bias", true.into()),
        (
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 2.0}),
        ),
        ("num_key_value_heads", 2.into()),
        ("hidden_act", "gelu".into()),
        ("model_type", "olmo2".into()),
        ("head_dim", 16.into()),
        ("attention_dropout", 0.1.into()),
        ("clip_qkv", (-1.0).into()),
        ("tie_word_embeddings", "yes".into()),
        ("hidden_size", "32".into()),
    ];
    for (field, value) in cases {
        let mut c = base.clone();
        c[field] = value.clone();
        let e = err_of(ModelConfig::from_hf_config(&c));
        assert!(
            e.contains(&format!("\"{field}\"")),
            "{field} = {value}: {e}"
        );
    }
    // a missing shape field; a field OlmoForCausalLM does not read is ignored
    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("num_hidden_layers");
    assert!(err_of(ModelConfig::from_hf_config(&c)).contains("\"num_hidden_layers\""));
    let mut c = base;
    c["output_attentions"] = true.into();
    assert!(ModelConfig::from_hf_config(&c).is_ok());
}

/// Arbitrary bytes as a weights file: an error every time, never a panic, and a config that
/// declares more parameters than the file holds is refused before anything is allocated.
#[test]
fn arbitrary_bytes_are_errors_not_panics() {
    let dir = fixture("tied-f32-single");
    let good = fs::read(dir.join(weights::SINGLE_FILE)).unwrap();
    let cfg = checkpoint::read_config(&dir).unwrap().1;
    let path = Path::new("fuzz.safetensors");
    assert!(weights::load_bytes(&good, path, &cfg).is_ok());
    let header = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize + 8;
    let mut r = ChaCha8Rng::seed_from_u64(99);
    let mut errors = 0;
    for i in 0..3000 {
        let mut b = good.clone();
        match i % 5 {
            // flip bytes inside the header (JSON: names, dtypes, shapes, offsets)
            0 | 1 => {
                for _ in 0..r.random_range(1..4) {
                    let k = r.random_range(0..header);
                    b[k] = r.random();
                }
            }
            // truncate anywhere
            2 => b.truncate(r.random_range(0..good.len())),
            // a header length field at random
            3 => b[..8].copy_from_slice(&r.random::<u64>().to_le_bytes()),
            // random bytes
            _ => b = (0..r.random_range(0..4096)).map(|_| r.random()).collect(),
        }
        let res = std::panic::catch_unwind(|| weights::load_bytes(&b, path, &cfg).is_err());
        match res {
            Ok(true) => errors += 1,
            Ok(false) => {} // a flip that left a valid file of the same shapes
            Err(_) => panic!("case {i}: the loader panicked"),
        }
    }
    assert!(errors > 2500, "{errors} of 3000 mutations were errors");
    // shapes in config.json far beyond the file: refused by size, before any allocation
    for (field, v) in [
        ("vocab_size", 1usize << 40),
        ("num_hidden_layers", usize::MAX / 8),
    ] {
        let mut big = cfg.clone();
        match field {
            "vocab_size" => big.vocab_size = v,
            _ => big.n_layers = v,
        }
        let e = err_of(weights::load_bytes(&good, path, &big));
        assert!(e.contains("fuzz.safetensors"), "{field}: {e}");
    }
}

#[test]
fn a_checkpoint_without_tokenizer_takes_one_by_flag() {
    let ck = checkpoint::load(&fixture("tied-f32-single")).unwrap();
    let e = err_of(ck.tokenizer_path(None));
    assert!(
        e.contains("no tokenizer.json") && e.contains("--tokenizer"),
        "{e}"
    );
    let p = Path::new("some/tokenizer.json");
    assert_eq!(ck.tokenizer_path(Some(p)).unwrap(), p);
}

/// probe, generate and evaluate read an HF-layout checkpoint (sharded bf16, untied, clip_qkv,
/// no tokenizer.json) with --tokenizer, and name the flag without it.
#[test]
fn commands_read_a_released_layout_with_tokenizer_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = [
        "the garden was quiet in the morning",
        "we walked along the river and talked",
        "you are a worthless idiot and a liar",
        "shut up you stupid fool, nobody likes you",
    ];
    let corpus: Vec<String> = (0..6)
        .flat_map(|k| texts.iter().map(move |s| format!("{s} {k}")))
        .collect();
    let tiny = fixtures::tiny_checkpoint(
        tmp.path(),
        &corpus,
        300,
        fixtures::two_layer_config(32),
        5,
        1.0,
    );
    let cfg = ModelConfig {
        tie_word_embeddings: false,
        clip_qkv: Some(1.5),
        vocab_real: tiny.cfg.vocab_size, // what a foreign config.json gives (no baddata section)
        ..tiny.cfg.clone()
    };
    let mut params = tiny.params.clone();
    let mut r = ChaCha8Rng::seed_from_u64(1);
    params.extend((0..cfg.vocab_size * cfg.d_model).map(|_| r.random_range(-0.2f32..0.2)));
    let hf = tmp.path().join("hf");
    write_hf(&hf, &cfg, &params, Dtype::BF16, Some(12_000), &[]);
    assert!(!hf.join("tokenizer.json").exists() && hf.join(weights::INDEX_FILE).exists());
    let tok = tmp.path().join("tokenizer.json");
    let (hf_s, tok_s) = (hf.to_str().unwrap(), tok.to_str().unwrap());
    let run = |exe: &str, args: &[&str]| {
        let o = Command::new(exe).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    // probe
    let mut lines = String::new();
    for (i, s) in corpus.iter().enumerate() {
        lines += &format!("{{\"text\": \"{s}\", \"label\": {}}}\n", (i % 4 >= 2) as u8);
    }
    let data = tmp.path().join("texts.jsonl");
    fs::write(&data, lines).unwrap();
    let probe_out = tmp.path().join("probe");
    let probe = env!("CARGO_BIN_EXE_probe");
    let args = ["--checkpoint", hf_s, "--data", data.to_str().unwrap()];
    let rest = [
        "--out",
        probe_out.to_str().unwrap(),
        "--top-k",
        "2",
        "--quiet",
        "--device",
        "cpu",
    ];
    let (ok, e) = run(probe, &[&args[..], &rest[..]].concat());
    assert!(!ok && e.contains("--tokenizer"), "{e}");
    let (ok, e) = run(
        probe,
        &[&args[..], &rest[..], &["--tokenizer", tok_s]].concat(),
    );
    assert!(ok, "probe: {e}");
    let iv = probe_out.join("intervention.json");
    assert!(iv.is_file());

    // generate
    let prompts = tmp.path().join("p.txt");
    fs::write(&prompts, "the garden\nyou are a\n").unwrap();
    let gen_out = tmp.path().join("gen.jsonl");
    let generate = env!("CARGO_BIN_EXE_generate");
    let args = [
        "--checkpoint",
        hf_s,
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        "--out",
        gen_out.to_str().unwrap(),
    ];
    let (ok, e) = run(generate, &args);
    assert!(!ok && e.contains("--tokenizer"), "{e}");
    let (ok, e) = run(
        generate,
        &[
            &args[..],
            &[
                "--tokenizer",
                tok_s,
                "--intervention",
                iv.to_str().unwrap(),
                "--alpha",
                "2",
            ],
        ]
        .concat(),
    );
    assert!(ok, "generate: {e}");
    assert_eq!(fs::read_to_string(&gen_out).unwrap().lines().count(), 2);

    // evaluate
    let mut ids = Vec::new();
    for s in &corpus {
        ids.extend(tiny.tok.encode(s).unwrap());
        ids.push(cfg.eos_token_id);
    }
    let val = tmp.path().join("val.shard");
    write_shard(&val, &ids, cfg.vocab_size, None).unwrap();
    let eval_out = tmp.path().join("eval");
    let evaluate = env!("CARGO_BIN_EXE_evaluate");
    let args = [
        "--checkpoint",
        hf_s,
        "--tokenizer",
        tok_s,
        "--intervention",
        iv.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--val",
        val.to_str().unwrap(),
        "--val-windows",
        "2",
        "--val-seq",
        "8",
        "--alphas",
        "0,2",
        "--samples",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        eval_out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ];
    let (ok, e) = run(evaluate, &args);
    assert!(ok, "evaluate: {e}");
    assert!(eval_out.join("results.json").is_file());
}
