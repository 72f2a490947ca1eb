//! Generation: KV-cache decoding against the full forward pass, greedy decoding, padded ids,
//! context limits, and the `generate` command end to end.

use baddata::backend::cpu::Cpu;
use baddata::config::ModelConfig;
use baddata::data::tokenizer::Tokenizer;
use baddata::model::generate::{sample_token, Chunk, KvCache, SampleOptions, ShiftPositions};
use baddata::model::{init_params, Model, ParamLayout};
use baddata::probe::intervention::HeadDirection;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::{save_intervention, two_row_steps};

fn small() -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        d_model: 16,
        n_heads: 2,
        d_ff: 24,
        vocab_size: 128,
        vocab_real: 100,
        context: 16,
        rope_theta: 10_000.0,
        layer_norm_eps: 1e-5,
        eos_token_id: 3,
        tie_word_embeddings: true,
        clip_qkv: None,
    }
}

/// A model with weights large enough that logits vary by several units.
fn model_and_params() -> (Model<Cpu<f32>>, Vec<f32>) {
    let cfg = small();
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f32> = init_params(&cfg, &layout, 7)
        .into_iter()
        .map(|x| 8.0 * x)
        .collect();
    (Model::new(cfg, Cpu::new()).unwrap(), params)
}

fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 37 + salt * 11 + 5) % 100)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.1, "{what}: logits too small to compare ({scale})");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "{what}: logit {i}: KV cache {a}, full forward {b} (scale {scale})"
        );
    }
    assert_eq!(got.len(), want.len());
}

/// Row 0 decodes one token at a time from position 0; row 1 prefills 5 tokens then decodes one
/// at a time; both share one cache and step together. Every logit vector must match the full
/// forward pass on the whole sequence.
fn check_kv_matches_full(model: &mut Model<Cpu<f32>>, params: &Vec<f32>, what: &str) {
    let (t, v) = (12, model.cfg.vocab_size);
    let seqs = [ids(t, 0), ids(t, 1)];
    let full: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| model.logits(params, s, 1, t).unwrap())
        .collect();
    let mut cache = KvCache::<f32>::new(&model.cfg, 2);
    // Tokens fed so far per row, counted here (not read from the cache).
    let mut fed = [0usize; 2];
    for chunks in two_row_steps([&seqs[0], &seqs[1]], 1, 5) {
        let out = model.decode(params, &mut cache, &chunks).unwrap();
        assert_eq!(out.len(), chunks.len());
        for (o, c) in out.iter().zip(&chunks) {
            fed[c.row] += c.tokens.len();
            let p = fed[c.row] - 1;
            assert_close(
                o,
                &full[c.row][p * v..(p + 1) * v],
                &format!("{what}: row {} pos {p}", c.row),
            );
        }
    }
    assert_eq!(cache.len(0), t);
    assert_eq!(cache.len(1), t);
}

#[test]
fn kv_cache_matches_full_forward() {
    let (mut model, params) = model_and_params();
    check_kv_matches_full(&mut model, &params, "no shift");
}

#[test]
fn kv_cache_matches_full_forward_with_head_shift() {
    let (mut model, params) = model_and_params();
    let d = model.cfg.d_model;
    let shift: Vec<f32> = (0..d).map(|i| ((i as f32) * 0.7).sin() * 3.0).collect();
    model.set_head_shift(1, Some(&shift)).unwrap();
    // The shift must change the logits, or this test would not check it.
    let s = ids(6, 0);
    let shifted = model.logits(&params, &s, 1, 6).unwrap();
    let mut plain_model = Model::new(small(), Cpu::<f32>::new()).unwrap();
    let plain = plain_model.logits(&params, &s, 1, 6).unwrap();
    let diff = shifted
        .iter()
        .zip(&plain)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff > 0.1, "head shift changes logits by only {diff}");
    check_kv_matches_full(&mut model, &params, "shift on layer 1");
}

#[test]
fn shift_at_generated_positions_only() {
    let (mut model, params) = model_and_params();
    let d = model.cfg.d_model;
    let shift: Vec<f32> = (0..d).map(|i| ((i as f32) * 0.3).cos() * 3.0).collect();
    let prompt = ids(6, 2);
    // Reference: prompt positions 0..4 unshifted, position 5 shifted. Built from two caches:
    // the unshifted full forward of the first 5 tokens fills the cache, then the last token is
    // decoded with the shift on.
    let mut cache = KvCache::<f32>::new(&model.cfg, 1);
    model
        .decode(
            &params,
            &mut cache,
            &[Chunk {
                row: 0,
                tokens: &prompt[..5],
                shift_from: 0,
            }],
        )
        .unwrap();
    model.set_head_shift(0, Some(&shift)).unwrap();
    let want = model
        .decode(
            &params,
            &mut cache,
            &[Chunk {
                row: 0,
                tokens: &prompt[5..],
                shift_from: 0,
            }],
        )
        .unwrap();
    let mut cache2 = KvCache::<f32>::new(&model.cfg, 1);
    let got = model
        .decode(
            &params,
            &mut cache2,
            &[Chunk {
                row: 0,
                tokens: &prompt,
                shift_from: 5,
            }],
        )
        .unwrap();
    assert_close(&got[0], &want[0], "shift_from");
    // And it differs from shifting every position.
    let all = model.logits(&params, &prompt, 1, 6).unwrap();
    let v = model.cfg.vocab_size;
    let diff = all[5 * v..]
        .iter()
        .zip(&got[0])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff > 1e-3,
        "generated-only shift equals all-positions shift"
    );
}

fn greedy(max_new: usize) -> SampleOptions {
    SampleOptions {
        max_new_tokens: max_new,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        eos: None,
        shift_positions: ShiftPositions::All,
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn greedy_is_deterministic_and_matches_full_forward() {
    let (mut model, params) = model_and_params();
    let prompts = vec![ids(3, 4), ids(7, 5)];
    let a = model.generate(&params, &prompts, 0, &greedy(6)).unwrap();
    let b = model.generate(&params, &prompts, 0, &greedy(6)).unwrap();
    assert_eq!(a, b);
    let (v, vr) = (model.cfg.vocab_size, model.cfg.vocab_real);
    for (p, g) in prompts.iter().zip(&a) {
        assert_eq!(g.tokens.len(), 6);
        let mut seq = p.clone();
        for &t in &g.tokens {
            let n = seq.len();
            let l = model.logits(&params, &seq, 1, n).unwrap();
            assert_eq!(
                t,
                argmax(&l[(n - 1) * v..(n - 1) * v + vr]),
                "after {seq:?}"
            );
            seq.push(t);
        }
    }
    // Batched and one-by-one agree.
    let alone = model
        .generate(&params, &prompts[1..], 1, &greedy(6))
        .unwrap();
    assert_eq!(alone[0], a[1]);
}

#[test]
fn sampling_is_seeded_and_stops_at_eos_and_context() {
    let (model, params) = model_and_params();
    let opts = SampleOptions {
        temperature: 1.0,
        top_p: 0.9,
        seed: 42,
        ..greedy(8)
    };
    let prompts = vec![ids(4, 1), ids(4, 2), ids(4, 3)];
    let a = model.generate(&params, &prompts, 0, &opts).unwrap();
    let b = model.generate(&params, &prompts, 0, &opts).unwrap();
    assert_eq!(a, b);
    let c = model
        .generate(
            &params,
            &prompts,
            0,
            &SampleOptions {
                seed: 43,
                ..opts.clone()
            },
        )
        .unwrap();
    assert_ne!(a, c, "another seed gives the same samples");
    // Stopping at the context: a 14-token prompt in a 16-token context gets 16 - 14 + 1 tokens
    // (the last one is sampled from position 15's logits and never fed back).
    let long = vec![ids(14, 0)];
    let g = model.generate(&params, &long, 0, &greedy(10)).unwrap();
    assert_eq!(g[0].tokens.len(), 3);
    assert_eq!(g[0].stop.as_str(), "context");
    // EOS: make the greedy first token the EOS id and check it stops with no tokens.
    let first = model.generate(&params, &long, 0, &greedy(1)).unwrap()[0].tokens[0];
    let g = model
        .generate(
            &params,
            &long,
            0,
            &SampleOptions {
                eos: Some(first),
                ..greedy(10)
            },
        )
        .unwrap();
    assert!(g[0].tokens.is_empty());
    assert_eq!(g[0].stop.as_str(), "eos");
}

#[test]
fn padded_ids_are_never_sampled() {
    let (mut model, mut params) = model_and_params();
    let cfg = model.cfg.clone();
    let (d, vr, v) = (cfg.d_model, cfg.vocab_real, cfg.vocab_size);
    let e = model.layout.embed.offset;
    // Padded rows = ±100 × real rows 0.., so some padded logit is huge at every position.
    for r in vr..v {
        let k = (r - vr) / 2;
        let sign = if (r - vr) % 2 == 0 { 100.0 } else { -100.0 };
        for c in 0..d {
            params[e + r * d + c] = sign * params[e + k * d + c];
        }
    }
    let prompts = vec![ids(5, 0), ids(9, 1)];
    let l = model.logits(&params, &prompts[0], 1, 5).unwrap();
    assert!(
        argmax(&l[4 * v..5 * v]) as usize >= vr,
        "the test needs a padded id to be the overall argmax"
    );
    for opts in [
        greedy(10),
        SampleOptions {
            temperature: 5.0,
            top_p: 1.0,
            seed: 1,
            ..greedy(10)
        },
    ] {
        for g in model.generate(&params, &prompts, 0, &opts).unwrap() {
            assert!(g.tokens.iter().all(|&t| (t as usize) < vr), "{g:?}");
        }
    }
    // Directly: a huge padded logit is still never chosen.
    let mut logits = vec![0f32; v];
    logits[v - 1] = 1e30;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for _ in 0..200 {
        assert!((sample_token(&logits, vr, 2.0, 1.0, &mut rng) as usize) < vr);
    }
    assert!((sample_token(&logits, vr, 0.0, 1.0, &mut rng) as usize) < vr);
}

#[test]
fn top_p_keeps_the_nucleus() {
    // Probabilities 0.5, 0.3, 0.2 (temperature 1): top_p 0.6 keeps ids 0 and 1 only.
    let logits: Vec<f32> = [0.5f64, 0.3, 0.2].iter().map(|p| p.ln() as f32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut counts = [0usize; 3];
    for _ in 0..2000 {
        counts[sample_token(&logits, 3, 1.0, 0.6, &mut rng) as usize] += 1;
    }
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[0] > 1000 && counts[1] > 600, "{counts:?}");
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let (model, params) = model_and_params();
    let prompts = vec![ids(4, 0), ids(17, 0)];
    let err = model
        .generate(&params, &prompts, 10, &greedy(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prompt 11") && err.contains("context of 16"),
        "{err}"
    );
}

/// A checkpoint of `small()` with a context of 24 and weights 8× the initialisation, with a BPE
/// trained on 200 numbered sentences about a cat; returns its directory, config and weights.
fn tiny_checkpoint(dir: &std::path::Path) -> (std::path::PathBuf, ModelConfig, Vec<f32>) {
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "the cat number {i} sat on the mat and looked at the dog {}",
                i * 7
            )
        })
        .collect();
    let base = ModelConfig {
        context: 24,
        ..small()
    };
    let ck = fixtures::tiny_checkpoint(dir, &texts, 300, base, 3, 8.0);
    (ck.dir, ck.cfg, ck.params)
}

fn run_bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn generate_command_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, cfg, params) = tiny_checkpoint(dir.path());
    let ck_s = ck.to_str().unwrap();
    let plain = dir.path().join("p.txt");
    std::fs::write(&plain, "the cat sat\n\nthe dog\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let o = run_bin(&[
        "--checkpoint",
        ck_s,
        "--prompts",
        plain.to_str().unwrap(),
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--batch",
        "1",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["prompt"], "the cat sat");
    assert_eq!(recs[1]["prompt"], "the dog");
    assert_eq!(recs[1]["line"], 3);
    // The completion is the greedy continuation computed by the library.
    let tok = Tokenizer::load(&ck.join("tokenizer.json")).unwrap();
    let model = Model::new(cfg.clone(), Cpu::<f32>::new()).unwrap();
    let p = vec![tok.encode("the dog").unwrap()];
    let opts = SampleOptions {
        eos: Some(cfg.eos_token_id),
        ..greedy(5)
    };
    let g = model.generate(&params, &p, 0, &opts).unwrap();
    assert_eq!(recs[1]["completion"], tok.decode(&g[0].tokens).unwrap());
    assert_eq!(recs[1]["completion_tokens"], g[0].tokens.len());

    // RealToxicityPrompts JSONL, auto-detected, with an intervention, sampling to stdout.
    let rtp = dir.path().join("rtp.jsonl");
    std::fs::write(
        &rtp,
        "{\"filename\": \"a\", \"prompt\": {\"text\": \"the cat\", \"toxicity\": 0.1}}\n",
    )
    .unwrap();
    let dh = cfg.d_head();
    let mut dir_v = vec![0f32; dh];
    dir_v[0] = 1.0;
    let heads = vec![HeadDirection {
        layer: 1,
        head: 0,
        direction: dir_v,
        sigma: 1.0,
        probe_accuracy: 0.9,
    }];
    let iv_path = save_intervention(
        dir.path().join("intervention.json"),
        &cfg,
        &params,
        heads.clone(),
    );
    let o = run_bin(&[
        "--checkpoint",
        ck_s,
        "--prompts",
        rtp.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--top-p",
        "0.9",
        "--intervention",
        iv_path.to_str().unwrap(),
        "--alpha",
        "5",
        "--shift-positions",
        "generated",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(rec["prompt"], "the cat");

    // An intervention made for other weights is refused.
    let other: Vec<f32> = params.iter().map(|x| x * 0.5).collect();
    let iv2_path = save_intervention(dir.path().join("other.json"), &cfg, &other, heads);
    let o = run_bin(&[
        "--checkpoint",
        ck_s,
        "--prompts",
        rtp.to_str().unwrap(),
        "--intervention",
        iv2_path.to_str().unwrap(),
        "--alpha",
        "5",
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another model"), "{err}");

    // A prompt longer than the context names its line.
    let long = dir.path().join("long.jsonl");
    let words = "zebra quantum 98765 ".repeat(20);
    std::fs::write(
        &long,
        format!("{{\"text\": \"short\"}}\n{{\"text\": \"{words}\"}}\n"),
    )
    .unwrap();
    let o = run_bin(&[
        "--checkpoint",
        ck_s,
        "--prompts",
        long.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("context of 24"),
        "{err}"
    );

    // --device cuda runs on the GPU when one is usable, else it is a clear error naming it.
    let o = run_bin(&[
        "--checkpoint",
        ck_s,
        "--prompts",
        plain.to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    if baddata::backend::cuda::open_context(0).is_ok() {
        assert!(o.status.success(), "--device cuda on a usable GPU: {err}");
    } else {
        assert!(!o.status.success());
        assert!(err.contains("--device cuda"), "{err}");
    }
}
