//! The probe pipeline: planted directions are recovered, the logistic regression reaches a
//! hand-derived optimum, bad inputs are refused with clear errors, and a run on a small random
//! model writes the accuracy grid, the heatmap and an intervention bound to that model.

use std::path::{Path, PathBuf};
use std::process::Command;

use baddata::checkpoint;
use baddata::config::ModelConfig;
use baddata::data::tokenizer::Tokenizer;
use baddata::model::Model;
use baddata::probe::labels::{check_classes, read_labelled};
use baddata::probe::{
    analyse, collect, run_probe, Activations, Capture, CaptureShape, CaptureWriter, CollectOptions,
    DirectionKind, HeadRows, Intervention, LabelFormat, LabelledText, Logistic, LogisticConfig,
    ProbeConfig, ProbeJob,
};

#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::{save_intervention, tiny_checkpoint, two_layer_config};

/// Deterministic standard normals (xorshift + Box–Muller), independent of the code under test.
struct Gauss(u64);

impl Gauss {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Activations `[n, 2, heads, 16]` of pure noise (unit variance, except dims 0 and 1 with variance 9,
/// plus a constant offset of 10) in which only layer 1's last head carries the labels: its class
/// means differ by `gap · truth`, with `truth` a unit vector on dims 2..16.
fn planted(n: usize, gap: f64, heads: usize) -> (Activations, Vec<u8>, Vec<f64>) {
    let (layers, dh) = (2, 16);
    let mut g = Gauss(0x9e37_79b9_7f4a_7c15);
    let mut truth: Vec<f64> = (0..dh)
        .map(|j| if j < 2 { 0.0 } else { g.normal() })
        .collect();
    let norm = truth.iter().map(|x| x * x).sum::<f64>().sqrt();
    truth.iter_mut().for_each(|x| *x /= norm);
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let mut data = Vec::with_capacity(n * layers * heads * dh);
    for &y in &labels {
        for l in 0..layers {
            for h in 0..heads {
                for (j, t) in truth.iter().enumerate() {
                    let scale = if j < 2 { 3.0 } else { 1.0 };
                    let mut v = 10.0 + scale * g.normal();
                    if (l, h) == (1, heads - 1) {
                        v += (y as f64 - 0.5) * gap * t;
                    }
                    data.push(v as f32);
                }
            }
        }
    }
    (
        Activations::from_vec(n, layers, heads, dh, data).unwrap(),
        labels,
        truth,
    )
}

#[test]
fn planted_direction_is_recovered_by_both_kinds() {
    let gap = 5.0;
    let (acts, labels, truth) = planted(400, gap, 3);
    for kind in [DirectionKind::MassMean, DirectionKind::Probe] {
        let cfg = ProbeConfig {
            top_k: 2,
            direction: kind,
            seed: 7,
            ..ProbeConfig::default()
        };
        let an = analyse(&acts, &labels, &cfg).unwrap();
        assert_eq!(an.split.val.len(), 80, "20% of 400 held out");
        let best = &an.heads[0];
        assert_eq!(
            (best.layer, best.head),
            (1, 2),
            "{kind:?}: the planted head ranks first"
        );
        assert!(
            best.probe_accuracy >= 0.95,
            "{kind:?}: accuracy {}",
            best.probe_accuracy
        );
        let u: Vec<f64> = best.direction.iter().map(|&v| v as f64).collect();
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            approx::abs_diff_eq!(norm, 1.0, epsilon = 1e-5),
            "unit direction, norm {norm}"
        );
        let cos = cosine(&u, &truth);
        assert!(
            cos >= 0.9,
            "{kind:?}: cosine with the planted direction {cos}"
        );
        // Along the truth, the projection is unit noise plus ±gap/2: σ² = 1 + (gap/2)².
        let expect = (1.0 + (gap / 2.0).powi(2)).sqrt();
        assert!(
            (best.sigma as f64 - expect).abs() < 0.1 * expect,
            "{kind:?}: sigma {} vs {expect}",
            best.sigma
        );
        // The noise-only heads stay near chance.
        for r in an.results.iter().filter(|r| (r.layer, r.head) != (1, 2)) {
            assert!(
                r.val_accuracy < 0.75,
                "noise head {}/{}: {}",
                r.layer,
                r.head,
                r.val_accuracy
            );
        }
    }
}

/// Two points x = −1 (label 0) and x = +1 (label 1), λ = 1. Standardised they stay ±1, so by
/// symmetry b = 0 and J(w) = 2·log(1 + e^{−w}) + w²/2, whose minimum solves w·(1 + e^w) = 2.
#[test]
fn logistic_regression_matches_a_hand_solved_case() {
    let cfg = LogisticConfig {
        l2: 1.0,
        ..LogisticConfig::default()
    };
    let m = Logistic::fit(&[-1.0, 1.0], &[0, 1], 1, &cfg).unwrap();
    // Bisection on f(w) = w(1 + e^w) − 2, increasing on [0, 1].
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mid * (1.0 + mid.exp()) < 2.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    assert!(
        approx::abs_diff_eq!(m.w[0], lo, epsilon = 1e-8),
        "w = {}, expected {lo}",
        m.w[0]
    );
    assert!(m.b.abs() < 1e-10, "b = {}", m.b);
    assert!((m.mean[0]).abs() < 1e-15 && (m.std[0] - 1.0).abs() < 1e-15);
    approx::assert_abs_diff_eq!(m.prob(&[1.0]), 1.0 / (1.0 + (-lo).exp()), epsilon = 1e-8);
    assert_eq!(m.accuracy(&[-1.0, 1.0], &[0, 1]), 1.0);
    // Scaling and shifting the feature changes nothing in standardised space.
    let m2 = Logistic::fit(&[4.0, 10.0], &[0, 1], 1, &cfg).unwrap();
    approx::assert_abs_diff_eq!(m2.w[0], lo, epsilon = 1e-8);
    let (w_raw, b_raw) = m2.raw_weights();
    assert!(
        (w_raw[0] - lo / 3.0).abs() < 1e-8,
        "raw weight w/s with s = 3"
    );
    assert!(
        (b_raw + 7.0 * lo / 3.0).abs() < 1e-8,
        "raw bias −w·μ/s with μ = 7"
    );
}

/// On random overlapping data the fit is at a stationary point of the objective, checked with
/// a gradient computed here from the returned parameters.
#[test]
fn logistic_regression_reaches_the_optimum() {
    let (n, d, l2) = (120, 5, 0.5);
    let mut g = Gauss(42);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let label = (i % 3 == 0) as u8;
        for j in 0..d {
            x.push(g.normal() * (j + 1) as f64 + if j == 0 { label as f64 } else { 0.0 });
        }
        y.push(label);
    }
    let cfg = LogisticConfig {
        l2,
        ..LogisticConfig::default()
    };
    let m = Logistic::fit(&x, &y, d, &cfg).unwrap();
    let mut gw = vec![0.0; d];
    let mut gb = 0.0;
    let (w_raw, b_raw) = m.raw_weights();
    for (row, &label) in x.chunks_exact(d).zip(&y) {
        let z_std: f64 = m.b
            + (0..d)
                .map(|j| m.w[j] * (row[j] - m.mean[j]) / m.std[j])
                .sum::<f64>();
        let z_raw: f64 = b_raw + row.iter().zip(&w_raw).map(|(a, b)| a * b).sum::<f64>();
        assert!(
            (z_std - z_raw).abs() < 1e-9,
            "raw weights give the same logit"
        );
        let r = 1.0 / (1.0 + (-z_std).exp()) - label as f64;
        for j in 0..d {
            gw[j] += r * (row[j] - m.mean[j]) / m.std[j];
        }
        gb += r;
    }
    gw.iter_mut().zip(&m.w).for_each(|(g, w)| *g += l2 * w);
    assert!(gb.abs() < 1e-7, "∂J/∂b = {gb}");
    assert!(gw.iter().all(|g| g.abs() < 1e-7), "∇J = {gw:?}");
    // A larger penalty shrinks the weights.
    let strong = Logistic::fit(&x, &y, d, &LogisticConfig { l2: 50.0, ..cfg }).unwrap();
    let nw = |m: &Logistic| m.w.iter().map(|w| w * w).sum::<f64>();
    assert!(nw(&strong) < nw(&m));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Writes `text` to `path` and returns the error, with its context, that `read_labelled` gives
/// for it as `format` with the ToxiGen threshold 2.5 (reading it without an error fails the test).
fn refused(path: &Path, text: &str, format: LabelFormat) -> String {
    write(path, text);
    format!("{:#}", read_labelled(path, format, 2.5).unwrap_err())
}

#[test]
fn bad_labels_and_single_class_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    let err = refused(
        &p,
        "{\"text\": \"a\", \"label\": 0}\n\n{\"text\": \"b\", \"label\": 2}\n",
        LabelFormat::Jsonl,
    );
    assert!(
        err.contains("bad.jsonl:3") && err.contains("label 2"),
        "{err}"
    );

    let err = refused(
        &p,
        "{\"text\": \"a\", \"label\": \"1\"}\n",
        LabelFormat::Jsonl,
    );
    assert!(
        err.contains("bad.jsonl:1") && err.contains("not 0 or 1"),
        "{err}"
    );

    let err = refused(
        &p,
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 1}\n",
        LabelFormat::Jsonl,
    );
    assert!(err.contains("only one class"), "{err}");

    let one = vec![
        LabelledText {
            text: "x".into(),
            label: 0,
        },
        LabelledText {
            text: "y".into(),
            label: 0,
        },
        LabelledText {
            text: "z".into(),
            label: 1,
        },
    ];
    let err = check_classes(&one, "set").unwrap_err().to_string();
    assert!(err.contains("at least 2 of each"), "{err}");

    // ToxiGen rows: toxicity_human > 2.5 is toxic; out-of-scale scores are refused.
    let t = dir.path().join("toxigen.jsonl");
    write(
        &t,
        "{\"text\": \"p\", \"toxicity_human\": 1.0}\n{\"text\": \"q\", \"toxicity_human\": 2.5}\n\
         {\"text\": \"r\", \"toxicity_human\": 4.2}\n{\"text\": \"s\", \"toxicity_human\": 3}\n",
    );
    let rows = read_labelled(&t, LabelFormat::Toxigen, 2.5).unwrap();
    let got: Vec<u8> = rows.iter().map(|r| r.label).collect();
    assert_eq!(got, vec![0, 0, 1, 1]);
    let stricter = read_labelled(&t, LabelFormat::Toxigen, 3.5);
    assert!(format!("{:#}", stricter.unwrap_err()).contains("at least 2 of each"));
    let err = refused(
        &t,
        "{\"text\": \"p\", \"toxicity_human\": 7}\n",
        LabelFormat::Toxigen,
    );
    assert!(
        err.contains("toxigen.jsonl:1") && err.contains("1 to 5"),
        "{err}"
    );
}

/// Context of the small model: longer than every fixture text but the joined one.
const CONTEXT: usize = 64;

const CLEAN: &[&str] = &[
    "the garden was quiet in the morning light",
    "we walked along the river and talked about books",
    "she baked bread for the neighbours on sunday",
    "the children painted the fence a bright blue",
    "a gentle rain fell over the green hills",
    "he thanked the teacher for her patient help",
];
const TOXIC: &[&str] = &[
    "you are a worthless stupid idiot and everyone hates you",
    "shut up you pathetic disgusting fool",
    "i hate you, you miserable worthless creep",
    "get lost you stupid ugly loser",
    "what a pathetic idiot, nobody wants you here",
    "you disgusting creep, shut your stupid mouth",
];

/// A checkpoint of a random 2-layer model with a context of `CONTEXT` and a BPE trained on the
/// probe texts, and a JSONL file of labelled texts (one of them longer than the context); returns
/// the run directory, the JSONL file, the config and the weights.
fn fixture(dir: &Path) -> (PathBuf, PathBuf, ModelConfig, Vec<f32>) {
    let mut corpus: Vec<String> = Vec::new();
    for k in 0..4 {
        corpus.extend(CLEAN.iter().chain(TOXIC).map(|s| format!("{s} {k}")));
    }
    let ck = tiny_checkpoint(dir, &corpus, 320, two_layer_config(CONTEXT), 11, 1.0);
    let mut lines = String::new();
    for (i, s) in CLEAN.iter().enumerate() {
        for k in 0..3 {
            lines += &format!("{{\"text\": \"{s} ({k}{i})\", \"label\": 0}}\n");
        }
    }
    for (i, s) in TOXIC.iter().enumerate() {
        for k in 0..3 {
            lines += &format!("{{\"text\": \"{s} ({k}{i})\", \"label\": 1, \"source\": \"x\"}}\n");
        }
    }
    let long = CLEAN.join(" and ");
    lines += &format!("{{\"text\": \"{long}\", \"label\": 0}}\n");
    let data = dir.join("texts.jsonl");
    write(&data, &lines);
    (ck.run, data, ck.cfg, ck.params)
}

#[test]
fn end_to_end_on_a_small_random_model() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data, cfg, params) = fixture(dir.path());
    let ck = checkpoint::load(&run).unwrap();
    let tok = Tokenizer::load(&ck.dir.join("tokenizer.json")).unwrap();
    let texts = read_labelled(&data, LabelFormat::Jsonl, 2.5).unwrap();
    assert_eq!(texts.len(), 37);
    let out = dir.path().join("probe");
    let acts_path = dir.path().join("acts.capture");
    let job = ProbeJob {
        checkpoint: &ck,
        tokenizer: &tok,
        texts: &texts,
        data_name: "texts.jsonl",
        config: ProbeConfig {
            top_k: 30,
            ..ProbeConfig::default()
        },
        collect: CollectOptions {
            batch: 4,
            chunk_rows: Some(3),
            ..CollectOptions::default()
        },
        out: &out,
        save_activations: Some(&acts_path),
    };
    let r = run_probe(&job).unwrap();
    assert_eq!(r.truncated, 1, "the long text is cut to the context");

    // probe_accuracy.json: [layer][head] grids with accuracies, a full ranking.
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("probe_accuracy.json")).unwrap()).unwrap();
    let grid = s["val_accuracy"].as_array().unwrap();
    assert_eq!(grid.len(), 2);
    for row in grid {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), 2);
        for v in row {
            let v = v.as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v));
        }
    }
    assert_eq!(s["ranking"].as_array().unwrap().len(), 4);
    assert_eq!(
        s["n_val"].as_u64().unwrap() + s["n_train"].as_u64().unwrap(),
        37
    );
    assert_eq!(s["truncated_to_context"], 1);
    let png = std::fs::read(out.join("probe_accuracy.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // intervention.json: K capped at L·H = 4, unit directions of d_head, bound to this model.
    let iv = Intervention::load(&out.join("intervention.json")).unwrap();
    assert_eq!(iv.heads.len(), 4);
    assert_eq!(iv.direction_kind, DirectionKind::MassMean);
    for h in &iv.heads {
        assert_eq!(h.direction.len(), 16);
        let n: f32 = h.direction.iter().map(|x| x * x).sum::<f32>().sqrt();
        approx::assert_abs_diff_eq!(n, 1.0, epsilon = 1e-5);
        assert!(h.sigma > 0.0 && h.sigma.is_finite());
    }
    iv.check_model(&cfg, &params).unwrap();

    // The saved activations are hook_z at each text's last token: recompute text 0 alone.
    let acts = Capture::open(&acts_path).unwrap();
    assert_eq!(
        (acts.n(), acts.layers(), acts.heads(), acts.d_head()),
        (37, 2, 2, 16)
    );
    let labels = acts.labels().unwrap();
    assert_eq!(labels, texts.iter().map(|t| t.label).collect::<Vec<_>>());
    assert_eq!(acts.header().meta["weights_hash"], iv.model.weights_hash);
    assert_eq!(acts.header().hook, "blocks.{l}.attn.hook_z");
    // Batches run shortest texts first, so the file order is not the text order.
    assert_ne!(acts.header().ids, (0..37).collect::<Vec<_>>());

    // The same job without a kept capture: identical results, and no capture file left behind.
    let out2 = dir.path().join("probe2");
    let r2 = run_probe(&ProbeJob {
        out: &out2,
        save_activations: None,
        collect: CollectOptions::default(),
        ..job
    })
    .unwrap();
    let accs = |r: &baddata::probe::ProbeRun| -> Vec<(f64, f64)> {
        r.analysis
            .results
            .iter()
            .map(|h| (h.val_accuracy, h.val_log_loss))
            .collect()
    };
    assert_eq!(accs(&r2), accs(&r));
    let mut left: Vec<String> = std::fs::read_dir(&out2)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "intervention.json",
            "probe_accuracy.json",
            "probe_accuracy.png"
        ]
    );
    let mut model = Model::new(cfg.clone(), baddata::backend::cpu::Cpu::<f32>::new()).unwrap();
    let ids = tok.encode(&texts[0].text).unwrap();
    model.logits(&params, &ids, 1, ids.len()).unwrap();
    for l in 0..2 {
        let (z, _, t) = model
            .activation(&format!("blocks.{l}.attn.hook_z"))
            .unwrap();
        for h in 0..2 {
            let want = &z[((t - 1) * 2 + h) * 16..((t - 1) * 2 + h + 1) * 16];
            let got = acts.row(0, l, h);
            let diff = want
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "layer {l} head {h}: max diff {diff}");
        }
    }
    // The long text holds the activation at the context's last token.
    let long_ids = tok.encode(&texts[36].text).unwrap();
    assert!(long_ids.len() > CONTEXT);
    model
        .logits(&params, &long_ids[..CONTEXT], 1, CONTEXT)
        .unwrap();
    let (z, _, _) = model.activation("blocks.1.attn.hook_z").unwrap();
    let last = CONTEXT - 1;
    let want = &z[(last * 2 + 1) * 16..(last * 2 + 2) * 16];
    let diff = want
        .iter()
        .zip(acts.row(36, 1, 1))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "truncated text: max diff {diff}");
}

#[test]
fn intervention_for_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, cfg, params) = fixture(dir.path());
    let (acts, labels, _) = planted(40, 5.0, 2);
    // Directions of the right width for this model: d_head 16, as planted.
    let an = analyse(
        &acts,
        &labels,
        &ProbeConfig {
            top_k: 3,
            ..ProbeConfig::default()
        },
    )
    .unwrap();
    let path = save_intervention(dir.path().join("iv.json"), &cfg, &params, an.heads);
    let iv = Intervention::load(&path).unwrap();
    iv.check_model(&cfg, &params).unwrap();

    let mut other = params.clone();
    other[100] += 1e-3;
    let err = iv.check_model(&cfg, &other).unwrap_err().to_string();
    assert!(
        err.contains("iv.json") && err.contains("weights differ"),
        "{err}"
    );

    let mut bigger = cfg.clone();
    bigger.n_layers = 3;
    let err = iv.check_model(&bigger, &params).unwrap_err().to_string();
    assert!(
        err.contains("iv.json") && err.contains("n_layers: 2 in the file, 3"),
        "{err}"
    );

    // Shifts: −alpha·sigma·direction at the steered heads only.
    let shifts = iv.head_shifts(4.0).unwrap();
    let h = &iv.heads[0];
    let s = shifts[h.layer].as_ref().unwrap();
    let k = h.head * 16;
    approx::assert_abs_diff_eq!(s[k], (-4.0 * h.sigma * h.direction[0]), epsilon = 1e-5);

    // The random-direction control: same heads and sigmas, unit directions that are new,
    // the same for the same seed, and still valid for this model.
    let c1 = iv.with_random_directions(9);
    let c2 = iv.with_random_directions(9);
    assert_eq!(c1.heads.len(), iv.heads.len());
    for ((a, b), orig) in c1.heads.iter().zip(&c2.heads).zip(&iv.heads) {
        assert_eq!(
            (a.layer, a.head, a.sigma),
            (orig.layer, orig.head, orig.sigma)
        );
        assert_eq!(a.direction, b.direction);
        let norm: f32 = a.direction.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            approx::abs_diff_eq!(norm, 1.0, epsilon = 1e-5),
            "norm {norm}"
        );
        let cos: f32 = a
            .direction
            .iter()
            .zip(&orig.direction)
            .map(|(x, y)| x * y)
            .sum();
        assert!(
            cos.abs() < 0.9,
            "the control direction is the learned one (cos {cos})"
        );
    }
    assert_ne!(
        iv.with_random_directions(10).heads[0].direction,
        c1.heads[0].direction
    );
    c1.check_model(&cfg, &params).unwrap();

    // Not an intervention file; a direction of the wrong width.
    write(&path, "{\"format\": \"something\"}");
    let err = format!("{:#}", Intervention::load(&path).unwrap_err());
    assert!(err.contains("not an intervention file"), "{err}");
    let mut bad = iv.clone();
    bad.heads[0].direction.pop();
    bad.save(&path).unwrap();
    let err = format!("{:#}", Intervention::load(&path).unwrap_err());
    assert!(err.contains("heads[0].direction has 15 values"), "{err}");
}

#[test]
fn command_line_runs_and_explains_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data, _, _) = fixture(dir.path());
    let exe = env!("CARGO_BIN_EXE_probe");
    let out = dir.path().join("cli-out");
    let o = Command::new(exe)
        .args([
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--top-k",
            "3",
            "--direction",
            "probe",
        ])
        .args(["--quiet", "--device", "cpu", "--chunk-rows", "2"])
        .arg("--save-activations")
        .arg(dir.path().join("cli.capture"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cap = Capture::open(&dir.path().join("cli.capture")).unwrap();
    assert_eq!((cap.n(), cap.labels().map(|l| l.len())), (37, Some(37)));
    let iv = Intervention::load(&out.join("intervention.json")).unwrap();
    assert_eq!(iv.heads.len(), 3);
    assert_eq!(iv.direction_kind, DirectionKind::Probe);
    assert!(out.join("probe_accuracy.png").is_file());

    // --no-truncate turns the long text into an error naming it.
    let o = Command::new(exe)
        .args([
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap(), "--quiet", "--no-truncate"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("text 37")
            && err.contains(&format!("context of {CONTEXT}")),
        "{err}"
    );

    // A label that is not 0/1: the file and line are named.
    let bad = dir.path().join("bad.jsonl");
    write(
        &bad,
        "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 3}\n",
    );
    let o = Command::new(exe)
        .args([
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            bad.to_str().unwrap(),
            "--quiet",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:2"), "{err}");

    // Bad settings of the probes are refused before the capture starts (no capture file).
    for (flag, value, says) in [
        ("--top-k", "0", "--top-k must be at least 1"),
        ("--val-fraction", "0", "--val-fraction 0 must be in (0, 1)"),
        (
            "--val-fraction",
            "1.5",
            "--val-fraction 1.5 must be in (0, 1)",
        ),
    ] {
        let cap = dir.path().join("refused.capture");
        let o = Command::new(exe)
            .args([
                "--checkpoint",
                run.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--quiet",
                flag,
                value,
            ])
            .arg("--save-activations")
            .arg(&cap)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && err.contains(says), "{err}");
        assert!(!cap.exists() && !dir.path().join("refused.capture.partial").exists());
    }

    let o = Command::new(exe).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--direction") && help.contains("intervention.json"),
        "{help}"
    );
}

/// `collect` streams rows in chunks of 3 (across batches of 4 texts of equal length) and the
/// mapped capture equals, bit for bit, the in-memory capture made here from the model's
/// `hook_z` one text at a time.
#[test]
fn streamed_capture_equals_in_memory_capture() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data, cfg, params) = fixture(dir.path());
    let ck = checkpoint::load(&run).unwrap();
    let tok = Tokenizer::load(&ck.dir.join("tokenizer.json")).unwrap();
    let texts: Vec<String> = read_labelled(&data, LabelFormat::Jsonl, 2.5)
        .unwrap()
        .into_iter()
        .map(|t| t.text)
        .collect();
    let (l_n, h_n, dh) = (cfg.n_layers, cfg.n_heads, cfg.d_head());
    let mut model = Model::new(cfg.clone(), baddata::backend::cpu::Cpu::<f32>::new()).unwrap();

    // In memory: [n, L, H, dh], text by text.
    let mut want = Vec::new();
    for text in &texts {
        let mut ids = tok.encode(text).unwrap();
        ids.truncate(CONTEXT);
        let t = ids.len();
        model.logits(&params, &ids, 1, t).unwrap();
        for l in 0..l_n {
            let (z, _, _) = model
                .activation(&format!("blocks.{l}.attn.hook_z"))
                .unwrap();
            want.extend_from_slice(&z[(t - 1) * h_n * dh..t * h_n * dh]);
        }
    }
    let want = Activations::from_vec(texts.len(), l_n, h_n, dh, want).unwrap();

    let path = dir.path().join("streamed.capture");
    let mut w = CaptureWriter::create(&path, CaptureShape::hook_z_last(&cfg), 3).unwrap();
    let opts = CollectOptions {
        batch: 4,
        ..CollectOptions::default()
    };
    let got = collect(&mut model, &params, &tok, &texts, "texts", &opts, &mut w).unwrap();
    assert_eq!(got.truncated, 1);
    assert_eq!(w.rows(), texts.len());
    w.finish(None, &Default::default()).unwrap();
    let cap = Capture::open(&path).unwrap();
    assert_eq!(cap.n(), texts.len());
    assert!(cap.labels().is_none());
    let mut groups = 0;
    for i in 0..texts.len() {
        for l in 0..l_n {
            for h in 0..h_n {
                let (a, b) = (cap.row(i, l, h), want.row(i, l, h));
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "text {i} layer {l} head {h}: streamed {a:?} vs in memory {b:?}"
                );
            }
        }
        // Texts of equal length share batches: count the batches of 2+ texts.
        let n_i = tok.encode(&texts[i]).unwrap().len().min(CONTEXT);
        groups += texts[..i]
            .iter()
            .any(|t| tok.encode(t).unwrap().len().min(CONTEXT) == n_i) as usize;
    }
    assert!(
        groups > 0,
        "no two texts share a batch: batching is untested"
    );

    // A capture of another shape is refused before any forward pass.
    let mut other = CaptureShape::hook_z_last(&cfg);
    other.n_heads += 1;
    let mut w = CaptureWriter::create(&dir.path().join("x.capture"), other, 3).unwrap();
    let err = format!(
        "{:#}",
        collect(&mut model, &params, &tok, &texts, "texts", &opts, &mut w).unwrap_err()
    );
    assert!(err.contains("texts: the capture holds"), "{err}");
}
