//! The toy experiment (Figure 3): the chains' generator, the entanglement arithmetic on
//! hand-built directions, the probes on planted data, and a tiny end-to-end run of `run_toy`
//! (results.json, resume, refusal of other settings).

use baddata::probe::logistic::LogisticConfig;
use baddata::toy::cell::{loss_floor, probe_stream, train_cell};
use baddata::toy::chains::{Chain, ToyChains, DEFAULT_CHAINS};
use baddata::toy::entanglement::{
    cosine, d4_lines, entanglement, probe_directions, random_entanglement, roc_auc, welch_bound,
    Negatives, TokenRows,
};
use baddata::toy::summary::{t975, MeanCi};
use baddata::toy::{run_toy, CellSettings, Hook, ProbeSettings, RunOptions, ToyConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn default_chains_give_twelve_features_whose_sequences_follow_their_cycle() {
    let ch = ToyChains::parse(DEFAULT_CHAINS).unwrap();
    assert_eq!(ch.vocab, 4);
    let feats = ch.features();
    assert_eq!(feats.len(), 12);
    // written out by hand: 0→1→2→3→0, 0→2→1→3→0, 0→3→2→1→0
    let succ = [[1, 2, 3, 0], [2, 3, 1, 0], [3, 0, 1, 2]];
    for f in &feats {
        let s = ch.sequence(*f, 9);
        assert_eq!(s[0], f.start);
        for w in s.windows(2) {
            assert_eq!(w[1], succ[f.chain][w[0] as usize], "feature {f:?}: {s:?}");
        }
    }
    // all twelve sequences differ
    let mut seqs: Vec<Vec<u32>> = feats.iter().map(|&f| ch.sequence(f, 8)).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 12);
}

#[test]
fn sampled_rows_are_chain_sequences_at_the_requested_share() {
    let ch = ToyChains::parse(DEFAULT_CHAINS).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (batch, len, share) = (4000, 11, 0.1);
    let rows = ch.sample_rows(&mut rng, 0, share, batch, len);
    assert_eq!(rows.len(), batch * len);
    let mut per_chain = [0usize; 3];
    let mut starts = [[0usize; 4]; 3];
    for row in rows.chunks_exact(len) {
        // the row is exactly one feature's sequence from position 0
        let f = ch
            .features()
            .into_iter()
            .find(|&f| ch.sequence(f, len) == row)
            .unwrap_or_else(|| panic!("row {row:?} follows no chain"));
        per_chain[f.chain] += 1;
        starts[f.chain][f.start as usize] += 1;
    }
    // binomial: within 5 standard deviations of the expected counts
    let n = batch as f64;
    for (c, &k) in per_chain.iter().enumerate() {
        let p = ch.chain_prob(c, 0, share);
        let sd = (n * p * (1.0 - p)).sqrt();
        assert!(
            (k as f64 - n * p).abs() < 5.0 * sd,
            "chain {c}: {k} rows, expected {}",
            n * p
        );
    }
    // starts uniform within the common chains
    for row in &starts[1..] {
        let tot: usize = row.iter().sum();
        for &k in row {
            let p = 0.25;
            let sd = (tot as f64 * p * (1.0 - p)).sqrt();
            assert!(
                approx::abs_diff_eq!(k as f64, tot as f64 * p, epsilon = 5.0 * sd),
                "{starts:?}"
            );
        }
    }
    assert_eq!(ch.chain_prob(1, 0, share) + ch.chain_prob(2, 0, share), 0.9);
}

#[test]
fn chain_lists_are_checked() {
    assert!(Chain::parse("0120").is_err());
    assert!(Chain::parse("0").is_err());
    assert!(Chain::parse("0a1").is_err());
    assert_eq!(Chain::parse("10-11-3").unwrap().tokens, vec![10, 11, 3]);
    let err = ToyChains::parse("0123,1230").unwrap_err();
    assert!(format!("{err:#}").contains("same sequence"), "{err:#}");
    assert!(ToyChains::parse("0123").is_err());
}

#[test]
fn loss_floor_of_two_reversed_cycles_is_the_first_guess() {
    // 0123 and 0321 disagree on every successor: the first prediction is a coin flip at share
    // 1/2 (ln 2) and every later one is certain, so the mean over `seq` positions is ln 2 / seq.
    let ch = ToyChains::parse("0123,0321").unwrap();
    for seq in [1, 4, 9] {
        let f = loss_floor(&ch, 0, 0.5, seq);
        assert!(
            approx::abs_diff_eq!(f, 2f64.ln() / seq as f64, epsilon = 1e-12),
            "seq {seq}: {f}"
        );
    }
    // at share p the first guess costs the entropy H(p)
    let p: f64 = 0.2;
    let h = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
    approx::assert_abs_diff_eq!(loss_floor(&ch, 0, p, 4), h / 4.0, epsilon = 1e-12);
}

#[test]
fn d4_lines_have_entanglement_one_half() {
    let lines = d4_lines();
    assert_eq!(lines.len(), 12);
    let e = entanglement(&lines).unwrap();
    for x in e {
        assert!(approx::abs_diff_eq!(x, 0.5, epsilon = 1e-12), "{x}");
    }
    // the Welch bound for 12 lines in 4 dimensions: sqrt(8/44)
    approx::assert_abs_diff_eq!(welch_bound(12, 4), (8.0f64 / 44.0).sqrt(), epsilon = 1e-15);
    approx::assert_abs_diff_eq!(welch_bound(12, 4), 0.426_401_432_711_220_8, epsilon = 1e-12);
    assert_eq!(welch_bound(4, 4), 0.0);
}

#[test]
fn six_icosahedron_diagonals_meet_the_welch_bound_in_three_dimensions() {
    // (0, ±1, ±φ) and its cyclic shifts: 12 vertices of the icosahedron, 6 lines through them
    let phi = (1.0 + 5f64.sqrt()) / 2.0;
    let mut lines = Vec::new();
    for s in [1.0, -1.0] {
        lines.push(vec![0.0, 1.0, s * phi]);
        lines.push(vec![1.0, s * phi, 0.0]);
        lines.push(vec![s * phi, 0.0, 1.0]);
    }
    let e = entanglement(&lines).unwrap();
    let bound = welch_bound(6, 3);
    approx::assert_abs_diff_eq!(bound, 1.0 / 5f64.sqrt(), epsilon = 1e-15);
    for x in e {
        assert!(
            approx::abs_diff_eq!(x, bound, epsilon = 1e-12),
            "{x} vs {bound}"
        );
    }
    // signs and scale do not matter; a zero vector is no direction
    assert!((cosine(&[2.0, 0.0], &[-3.0, 0.0]) + 1.0).abs() < 1e-15);
    let e = entanglement(&[vec![1.0, 0.0], vec![1.0, 1.0], vec![0.0, 0.0]]).unwrap();
    assert!(
        (e[0] - 0.5f64.sqrt()).abs() < 1e-12 && e[2].is_nan(),
        "{e:?}"
    );
}

#[test]
fn random_directions_in_four_dimensions_sit_near_0_84() {
    // E max over 11 others of |cos| in 4 dimensions, by numerical integration of the density of
    // |cos| (∝ sqrt(1 − c²) on [0, 1]): E = ∫ (1 − F(c)^11) dc = 0.8432
    let f = |c: f64| (c * (1.0 - c * c).sqrt() + c.asin()) / (std::f64::consts::PI / 2.0);
    let n = 200_000;
    let exact: f64 = (0..n)
        .map(|i| {
            let c = (i as f64 + 0.5) / n as f64;
            1.0 - f(c).powi(11)
        })
        .sum::<f64>()
        / n as f64;
    let (mean, _) = random_entanglement(12, 4, 4000, 1);
    assert!(
        approx::abs_diff_eq!(mean, exact, epsilon = 0.005),
        "{mean} vs {exact}"
    );
    assert!(
        approx::abs_diff_eq!(exact, 0.843, epsilon = 0.002),
        "{exact}"
    );
}

#[test]
fn probes_recover_a_planted_direction() {
    // two features at one token: rows at +2u and −2u plus unit noise; the first feature's
    // direction is u, the second's −u, so each is fully entangled with the other
    let u = [0.5, -0.5, 0.5, 0.5];
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut x = Vec::new();
    let mut feature = Vec::new();
    for i in 0..400 {
        let f = i % 2;
        let s = if f == 0 { 2.0 } else { -2.0 };
        for &uj in &u {
            x.push(s * uj + (rng.random::<f64>() - 0.5) * 2.0);
        }
        feature.push(f);
    }
    let rows = [TokenRows {
        token: 0,
        x: &x,
        feature: &feature,
    }];
    let p = probe_directions(
        &rows,
        2,
        4,
        Negatives::SameToken,
        &LogisticConfig::default(),
    )
    .unwrap();
    assert!(cosine(&p[0].direction, &u) > 0.97, "{:?}", p[0].direction);
    assert!(cosine(&p[1].direction, &u) < -0.97, "{:?}", p[1].direction);
    assert!(p[0].accuracy[0] > 0.95);
    let e = entanglement(&[p[0].direction.clone(), p[1].direction.clone()]).unwrap();
    assert!(e[0] > 0.99 && e[1] > 0.99, "{e:?}");
}

#[test]
fn roc_auc_counts_ordered_pairs() {
    assert_eq!(roc_auc(&[1.0, 2.0, 3.0, 4.0], &[0, 0, 1, 1]), 1.0);
    assert_eq!(roc_auc(&[4.0, 3.0, 2.0, 1.0], &[0, 0, 1, 1]), 0.0);
    assert_eq!(roc_auc(&[1.0, 1.0, 1.0], &[0, 1, 0]), 0.5);
    // pairs (pos, neg): (2, 1) yes, (2, 3) no, (4, 1) yes, (4, 3) yes: 3 of 4
    assert_eq!(roc_auc(&[1.0, 2.0, 3.0, 4.0], &[0, 1, 0, 1]), 0.75);
    assert!(roc_auc(&[1.0], &[1]).is_nan());
}

#[test]
fn a_cell_is_deterministic_and_keeps_every_stream() {
    let ch = ToyChains::parse(DEFAULT_CHAINS).unwrap();
    let s = CellSettings {
        steps: 4,
        batch: 4,
        seq: 8,
        ..CellSettings::default()
    };
    let a = train_cell(&ch, &s, 0.1, 7, &|| ()).unwrap();
    let b = train_cell(&ch, &s, 0.1, 7, &|| ()).unwrap();
    assert_eq!(a.streams, b.streams);
    assert_eq!(a.final_loss, b.final_loss);
    let c = train_cell(&ch, &s, 0.1, 8, &|| ()).unwrap();
    assert_ne!(a.streams, c.streams);
    // the embedding and the 4 blocks' outputs, [12 features, 8 positions, 4]
    let names: Vec<&str> = a.streams.iter().map(|s| s.hook.as_str()).collect();
    assert_eq!(
        names,
        [
            "blocks.0.hook_resid_pre",
            "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_post",
            "blocks.2.hook_resid_post",
            "blocks.3.hook_resid_post"
        ]
    );
    assert!(a.streams.iter().all(|s| s.values.len() == 12 * 8 * 4));
    // at the embedding every feature showing token t has the same vector (the embedding row)
    let e = &a.streams[0].values;
    let feats = ch.features();
    for (i, &f) in feats.iter().enumerate() {
        let t0 = ch.sequence(f, 8)[0] as usize;
        let j = feats
            .iter()
            .position(|g| g.start as usize == t0 && g.chain != f.chain)
            .unwrap();
        assert_eq!(e[i * 32..i * 32 + 4], e[j * 32..j * 32 + 4]);
    }
    // so the same-token probes find no direction there, and do on a block's output
    let p = ProbeSettings::default();
    let emb = probe_stream(&ch, &a, 0, &p).unwrap();
    assert!(emb.entanglement.iter().all(|x| x.is_nan()));
    let out = probe_stream(&ch, &a, 4, &p).unwrap();
    assert!(out.entanglement.iter().all(|x| (0.0..=1.0).contains(x)));
}

#[test]
fn t_intervals() {
    assert_eq!(t975(1), 12.706);
    assert_eq!(t975(9), 2.262);
    // the expansion beyond the table continues it (t_{0.975, 40} = 2.021, t_{0.975, 120} = 1.980)
    approx::assert_abs_diff_eq!(t975(31), 2.040, epsilon = 2e-3);
    approx::assert_abs_diff_eq!(t975(40), 2.021, epsilon = 1e-3);
    approx::assert_abs_diff_eq!(t975(120), 1.980, epsilon = 1e-3);
    let m = MeanCi::of(&[1.0, 2.0, 3.0]);
    assert_eq!(m.mean, 2.0);
    assert_eq!(m.sd, 1.0);
    approx::assert_abs_diff_eq!(m.ci_hi, (2.0 + 4.303 / 3f64.sqrt()), epsilon = 1e-12);
    assert!(MeanCi::of(&[1.0]).ci_lo.is_nan());
}

/// A value as JSON (NaN as null, so that two results with NaN intervals compare equal).
fn js<T: serde::Serialize>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).unwrap()
}

fn tiny_config(out: &std::path::Path) -> ToyConfig {
    ToyConfig {
        cell: CellSettings {
            steps: 5,
            warmup: 1,
            batch: 4,
            seq: 8,
            ..CellSettings::default()
        },
        probe: ProbeSettings::default(),
        shares: vec![0.05, 0.3],
        seeds: 1,
        out: out.to_path_buf(),
    }
}

#[test]
fn tiny_run_writes_well_formed_results_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let r = run_toy(&cfg, RunOptions { progress: false }).unwrap();
    assert_eq!((r.trained, r.reused), (2, 0));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(v["shares"], serde_json::json!([0.05, 0.3]));
    assert_eq!(v["seeds"], 1);
    assert_eq!(v["settings"]["steps"], 5);
    assert_eq!(v["settings"]["d_model"], 4);
    assert_eq!(v["probe"]["hook"], "resid-post");
    assert_eq!(v["hook"], "blocks.3.hook_resid_post");
    assert_eq!(v["features"].as_array().unwrap().len(), 12);
    assert_eq!(v["rare_features"], serde_json::json!([0, 1, 2, 3]));
    approx::assert_abs_diff_eq!(v["welch_bound"].as_f64().unwrap(), 0.4264, epsilon = 1e-4);
    assert_eq!(v["d4_level"], 0.5);
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2);
    for p in pts {
        for k in ["rare_per_seed", "others_per_seed"] {
            let vals = p[k].as_array().unwrap();
            assert_eq!(vals.len(), 1);
            let x = vals[0].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k} {x}");
        }
        assert_eq!(p["rare"]["n"], 1);
        assert!(p["final_loss"]["mean"].as_f64().unwrap() > 0.0);
        assert_eq!(p["chain_excess_loss"].as_array().unwrap().len(), 3);
        assert_eq!(p["entanglement_per_seed"][0].as_array().unwrap().len(), 12);
    }
    // every residual stream after the embedding has both groups
    let streams = v["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 5);
    assert_eq!(streams[4]["hook"], "blocks.3.hook_resid_post");
    assert!(streams[4]["points"][0]["rare"]["mean"].as_f64().is_some());
    // the embedding has no same-token direction: no points there
    assert_eq!(streams[0]["points"].as_array().unwrap().len(), 0);
    // the main stream is the last block's output, as chosen
    assert_eq!(
        streams[4]["points"][1]["others"]["mean"],
        pts[1]["others"]["mean"]
    );
    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    assert!(csv.starts_with("share,group,mean,ci95_lo,ci95_hi"));
    let png = std::fs::read(dir.path().join("entanglement.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // a rerun reuses both cells and gives the same numbers
    let again = run_toy(&cfg, RunOptions { progress: false }).unwrap();
    assert_eq!((again.trained, again.reused), (0, 2));
    for (a, b) in again.results.points.iter().zip(&r.results.points) {
        assert_eq!(a.share, b.share);
        for (x, y) in [
            (a.rare.mean, b.rare.mean),
            (a.others.mean, b.others.mean),
            (a.final_loss.mean, b.final_loss.mean),
        ] {
            assert!(approx::abs_diff_eq!(x, y, epsilon = 1e-12), "{x} vs {y}");
        }
    }

    // other probe settings reuse the cells: block 1's output is the main stream now
    let mut at1 = cfg.clone();
    at1.probe.layer = 1;
    let r1 = run_toy(&at1, RunOptions { progress: false }).unwrap();
    assert_eq!((r1.trained, r1.reused), (0, 2));
    assert_eq!(r1.results.hook, "blocks.1.hook_resid_post");
    // (as JSON: one seed's intervals are NaN, which equals nothing)
    assert_eq!(js(&r1.results.points), js(&r1.results.streams[2].points));
    let mut pre2 = cfg.clone();
    pre2.probe.hook = Hook::ResidPre;
    pre2.probe.layer = 2;
    let r2 = run_toy(&pre2, RunOptions { progress: false }).unwrap();
    assert_eq!(
        js(&r2.results.points),
        js(&r1.results.points),
        "resid_pre of 2 is resid_post of 1"
    );
    // the embedding is refused as the probed stream
    let mut emb = cfg.clone();
    emb.probe.hook = Hook::ResidPre;
    emb.probe.layer = 0;
    let msg = format!(
        "{:#}",
        run_toy(&emb, RunOptions { progress: false }).unwrap_err()
    );
    assert!(msg.contains("no direction"), "{msg}");

    // other training settings in the same directory are refused, naming the field
    let mut other = cfg.clone();
    other.cell.steps = 6;
    let err = run_toy(&other, RunOptions { progress: false }).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("steps") && msg.contains("other settings"),
        "{msg}"
    );
}

#[test]
fn bad_settings_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(dir.path());
    cfg.probe.layer = 4;
    let msg = format!(
        "{:#}",
        run_toy(&cfg, RunOptions { progress: false }).unwrap_err()
    );
    assert!(msg.contains("--layer 4"), "{msg}");
    let mut cfg = tiny_config(dir.path());
    cfg.shares = vec![0.0];
    let msg = format!(
        "{:#}",
        run_toy(&cfg, RunOptions { progress: false }).unwrap_err()
    );
    assert!(msg.contains("--shares"), "{msg}");
    let mut cfg = tiny_config(dir.path());
    cfg.cell.n_heads = 4; // head width 1: odd
    let msg = format!(
        "{:#}",
        run_toy(&cfg, RunOptions { progress: false }).unwrap_err()
    );
    assert!(msg.contains("even"), "{msg}");
    let mut cfg = tiny_config(dir.path());
    cfg.cell.rare_chain = 3;
    let msg = format!(
        "{:#}",
        run_toy(&cfg, RunOptions { progress: false }).unwrap_err()
    );
    assert!(msg.contains("--rare-chain"), "{msg}");
}
