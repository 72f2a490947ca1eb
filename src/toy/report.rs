//! The toy's results: per share, the entanglement of the underrepresented chain's features and of
//! the others over seeds, the reference levels, `results.json`, `results.csv` and the figure.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::cell::{probe_stream, stream_name, CellResult, Probed};
use super::chains::{Feature, ToyChains};
use super::entanglement::{random_entanglement, welch_bound, D4_ENTANGLEMENT};
use super::summary::MeanCi;
use super::{CellSettings, Hook, ProbeSettings, ToyConfig};
use crate::plot::{chart, Chart, Legend, Line, Point, RefLine};

/// Draws of all the features' directions for the random-directions reference level.
pub const RANDOM_TRIALS: usize = 20_000;

/// The level random directions give: the mean entanglement of `n_features` uniformly random
/// unit vectors in `d_model` dimensions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RandomLevel {
    /// Mean entanglement.
    pub mean: f64,
    /// Its standard deviation per feature.
    pub sd: f64,
    /// Draws of all features (Monte Carlo).
    pub trials: usize,
    /// Seed of the draws.
    pub seed: u64,
}

/// One share's results over seeds, on one residual stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SharePoint {
    /// Share of the underrepresented chain.
    pub share: f64,
    /// Per seed (seed order), per feature: the entanglement.
    pub entanglement_per_seed: Vec<Vec<f64>>,
    /// Per seed: the mean entanglement of the underrepresented chain's features.
    pub rare_per_seed: Vec<f64>,
    /// Per seed: the mean entanglement of the other chains' features.
    pub others_per_seed: Vec<f64>,
    /// Over seeds: the underrepresented features' entanglement.
    pub rare: MeanCi,
    /// Over seeds: the other features'.
    pub others: MeanCi,
    /// Over seeds: underrepresented minus others (paired by seed).
    pub gap: MeanCi,
    /// Over seeds: the mean ROC AUC of the underrepresented features' probes (over features and
    /// tokens; 0.5 is chance).
    pub rare_probe_auc: MeanCi,
    /// Over seeds: the same for the other features' probes.
    pub others_probe_auc: MeanCi,
    /// Over seeds: the final training loss (nats per token).
    pub final_loss: MeanCi,
    /// The lowest loss any model can reach on this mixture.
    pub loss_floor: f64,
    /// Per chain, over seeds: the model's loss on that chain's sequences minus the lowest
    /// possible (nats per token; near 0: the chain is learned).
    pub chain_excess_loss: Vec<MeanCi>,
}

/// How the gap changes from the smallest share to the largest, paired by seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GapChange {
    /// The smallest share.
    pub from_share: f64,
    /// The largest share.
    pub to_share: f64,
    /// Per seed: gap at `from_share` minus gap at `to_share` (positive: the gap closes, as in
    /// the paper).
    pub per_seed: Vec<f64>,
    /// Over seeds.
    pub summary: MeanCi,
}

/// The whole measurement on one residual stream of the same models.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamSummary {
    /// The activation (`blocks.0.hook_resid_pre` is the embedding).
    pub hook: String,
    /// Per share, in the order given; empty where the probes found no direction (with
    /// `--negatives same-token`, the embedding: a token looks the same in every feature there).
    pub points: Vec<SharePoint>,
    /// The gap's change from the smallest to the largest share.
    pub gap_change: Option<GapChange>,
}

/// Everything `results.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToyResults {
    /// What this reproduces.
    pub experiment: &'static str,
    /// The training settings every cell shares.
    pub settings: CellSettings,
    /// How the streams were probed; `hook` and `layer` choose the stream of `points`.
    pub probe: ProbeSettings,
    /// The shares run.
    pub shares: Vec<f64>,
    /// The seeds run (`0..seeds`).
    pub seeds: u64,
    /// The chains, as cycles of tokens.
    pub chains: Vec<String>,
    /// The features, in the order of every per-feature array.
    pub features: Vec<Feature>,
    /// Indices of the underrepresented chain's features.
    pub rare_features: Vec<usize>,
    /// The Welch bound for this many features in `d_model` dimensions.
    pub welch_bound: f64,
    /// The largest |cos| of the D4 root system's 12 lines (the best 12 lines in 4 dimensions).
    pub d4_level: f64,
    /// The random-directions level.
    pub random_directions: RandomLevel,
    /// The probed stream's name.
    pub hook: String,
    /// Per share, on the probed stream.
    pub points: Vec<SharePoint>,
    /// The gap's change from the smallest to the largest share, on the probed stream.
    pub gap_change: Option<GapChange>,
    /// The same measurement on every residual stream (embedding, then each block's output).
    pub streams: Vec<StreamSummary>,
    /// Wall-clock seconds this invocation spent training cells (0 when all were reused).
    pub train_seconds: f64,
    /// Cells trained by this invocation (the rest were read back).
    pub cells_trained: usize,
    /// The cells' own wall-clock seconds of training, summed over all cells of the grid (each
    /// cell runs on one thread, so on `c` free cores the grid takes about this over `c`).
    pub cell_seconds_total: f64,
}

/// Probes every cell on every stream and groups the results by share (each share's seeds
/// `0..cfg.seeds` must all be there). Errors when the chosen stream has a feature without a
/// direction.
pub fn aggregate(
    cfg: &ToyConfig,
    chains: &ToyChains,
    cells: &[CellResult],
    train_seconds: f64,
    cells_trained: usize,
) -> Result<ToyResults> {
    let feats = chains.features();
    let rare: Vec<usize> = (0..feats.len())
        .filter(|&i| feats[i].chain == cfg.cell.rare_chain)
        .collect();
    let n_streams = cfg.cell.n_layers + 1;
    let main = cfg.probe.stream();
    // by share, the cells in seed order
    let mut by_share: Vec<Vec<&CellResult>> = Vec::new();
    for &share in &cfg.shares {
        let mut these: Vec<&CellResult> = cells.iter().filter(|c| c.share == share).collect();
        these.sort_by_key(|c| c.seed);
        ensure!(
            these.len() as u64 == cfg.seeds,
            "share {share}: {} cells for {} seeds",
            these.len(),
            cfg.seeds
        );
        for c in &these {
            ensure!(
                c.streams.len() == n_streams
                    && c.chain_loss.len() == chains.chains.len()
                    && c.chain_floor.len() == chains.chains.len(),
                "share {share} seed {}: the cell holds {} streams and {} chain losses, expected {n_streams} and {}",
                c.seed,
                c.streams.len(),
                c.chain_loss.len(),
                chains.chains.len()
            );
        }
        by_share.push(these);
    }
    // probes[share][seed][stream], all cells in parallel
    let probes: Vec<Vec<Vec<Probed>>> = by_share
        .par_iter()
        .map(|these| {
            these
                .iter()
                .map(|c| {
                    (0..n_streams)
                        .map(|k| probe_stream(chains, c, k, &cfg.probe))
                        .collect::<Result<Vec<_>>>()
                        .with_context(|| format!("share {} seed {}", c.share, c.seed))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let main_name = stream_name(main);
    for (these, pr) in by_share.iter().zip(&probes) {
        for (c, p) in these.iter().zip(pr) {
            if let Some(f) = p[main].entanglement.iter().position(|e| !e.is_finite()) {
                bail!(
                    "{main_name}: the probes found no direction for feature {f} (share {}, seed {}): \
                     its activations do not vary within a token there, as at the embedding; probe a later layer",
                    c.share,
                    c.seed
                );
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let groups = |e: &[f64]| -> (f64, f64) {
        let pick = |want: bool| -> Vec<f64> {
            (0..e.len())
                .filter(|i| rare.contains(i) == want)
                .map(|i| e[i])
                .collect()
        };
        (mean(&pick(true)), mean(&pick(false)))
    };
    let auc_of = |p: &Probed, want_rare: bool| -> f64 {
        let a: Vec<f64> = p
            .auc
            .iter()
            .enumerate()
            .filter(|(i, _)| rare.contains(i) == want_rare)
            .flat_map(|(_, t)| t.iter().flatten().copied())
            .collect();
        mean(&a)
    };
    let mut streams = Vec::with_capacity(n_streams);
    for k in 0..n_streams {
        let mut points = Vec::new();
        for ((&share, these), pr) in cfg.shares.iter().zip(&by_share).zip(&probes) {
            let ent: Vec<Vec<f64>> = pr.iter().map(|p| p[k].entanglement.clone()).collect();
            if ent.iter().flatten().any(|e| !e.is_finite()) {
                points.clear();
                break;
            }
            let g: Vec<(f64, f64)> = ent.iter().map(|e| groups(e)).collect();
            let rare_per_seed: Vec<f64> = g.iter().map(|x| x.0).collect();
            let others_per_seed: Vec<f64> = g.iter().map(|x| x.1).collect();
            let gaps: Vec<f64> = g.iter().map(|x| x.0 - x.1).collect();
            let losses: Vec<f64> = these.iter().map(|c| c.final_loss).collect();
            let chain_excess_loss = (0..chains.chains.len())
                .map(|ch| {
                    let v: Vec<f64> = these
                        .iter()
                        .map(|c| c.chain_loss[ch] - c.chain_floor[ch])
                        .collect();
                    MeanCi::of(&v)
                })
                .collect();
            let rare_auc: Vec<f64> = pr.iter().map(|p| auc_of(&p[k], true)).collect();
            let others_auc: Vec<f64> = pr.iter().map(|p| auc_of(&p[k], false)).collect();
            points.push(SharePoint {
                share,
                entanglement_per_seed: ent,
                rare: MeanCi::of(&rare_per_seed),
                others: MeanCi::of(&others_per_seed),
                gap: MeanCi::of(&gaps),
                rare_per_seed,
                others_per_seed,
                rare_probe_auc: MeanCi::of(&rare_auc),
                others_probe_auc: MeanCi::of(&others_auc),
                final_loss: MeanCi::of(&losses),
                loss_floor: these[0].loss_floor,
                chain_excess_loss,
            });
        }
        let gap_change = gap_change(&points);
        streams.push(StreamSummary {
            hook: stream_name(k),
            points,
            gap_change,
        });
    }
    let rand_seed = 0;
    let (rmean, rsd) = random_entanglement(feats.len(), cfg.cell.d_model, RANDOM_TRIALS, rand_seed);
    Ok(ToyResults {
        experiment: "arXiv 2505.04741 (When Bad Data Leads to Good Models), Section 2, Figure 3",
        settings: cfg.cell.clone(),
        probe: cfg.probe.clone(),
        shares: cfg.shares.clone(),
        seeds: cfg.seeds,
        chains: chains.chains.iter().map(|c| c.label()).collect(),
        features: feats.clone(),
        rare_features: rare,
        welch_bound: welch_bound(feats.len(), cfg.cell.d_model),
        d4_level: D4_ENTANGLEMENT,
        random_directions: RandomLevel {
            mean: rmean,
            sd: rsd,
            trials: RANDOM_TRIALS,
            seed: rand_seed,
        },
        hook: main_name,
        points: streams[main].points.clone(),
        gap_change: streams[main].gap_change.clone(),
        streams,
        train_seconds,
        cells_trained,
        cell_seconds_total: by_share.iter().flatten().map(|c| c.seconds).sum(),
    })
}

/// The gap at the smallest share minus the gap at the largest, per seed (`None` with fewer than
/// two shares).
fn gap_change(points: &[SharePoint]) -> Option<GapChange> {
    if points.len() < 2 {
        return None;
    }
    let lo = points.iter().min_by(|a, b| a.share.total_cmp(&b.share))?;
    let hi = points.iter().max_by(|a, b| a.share.total_cmp(&b.share))?;
    let per_seed: Vec<f64> = (0..lo.rare_per_seed.len())
        .map(|s| {
            (lo.rare_per_seed[s] - lo.others_per_seed[s])
                - (hi.rare_per_seed[s] - hi.others_per_seed[s])
        })
        .collect();
    Some(GapChange {
        from_share: lo.share,
        to_share: hi.share,
        summary: MeanCi::of(&per_seed),
        per_seed,
    })
}

/// The plotted numbers: one row per (share, group) with the mean, its 95% interval, the number
/// of seeds and the per-seed values (space-separated).
pub fn csv(r: &ToyResults) -> String {
    let mut s = String::from("share,group,mean,ci95_lo,ci95_hi,sd,n_seeds,per_seed\n");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.6}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for p in &r.points {
        for (group, m, v) in [
            ("underrepresented", &p.rare, &p.rare_per_seed),
            ("others", &p.others, &p.others_per_seed),
        ] {
            s.push_str(&format!(
                "{:.6},{group},{:.6},{:.6},{:.6},{:.6},{},{}\n",
                p.share,
                m.mean,
                m.ci_lo,
                m.ci_hi,
                m.sd,
                m.n,
                fmt(v)
            ));
        }
    }
    s
}

/// Draws both groups' mean entanglement against the share, with 95% intervals over seeds, and
/// the reference levels (Welch bound, D4 lines, random directions). The two groups are drawn
/// 0.8% of the x range to either side of their share so that their bars stay apart.
pub fn plot(r: &ToyResults, path: &Path) -> Result<()> {
    let pts = |f: &dyn Fn(&SharePoint) -> &MeanCi| -> Vec<Point> {
        r.points
            .iter()
            .map(|p| {
                let m = f(p);
                let pt = Point::new(p.share, m.mean);
                if m.ci_lo.is_finite() {
                    pt.y_range(m.ci_lo, m.ci_hi)
                } else {
                    pt
                }
            })
            .collect()
    };
    let rare = pts(&|p| &p.rare);
    let others = pts(&|p| &p.others);
    let n_rare = r.rare_features.len();
    let n_other = r.features.len() - n_rare;
    let rare_label = format!("underrepresented chain ({n_rare} features)");
    let other_label = format!("other chains ({n_other} features)");
    let welch = format!("Welch bound {:.3}", r.welch_bound);
    let d4 = format!("D4 lines {:.1}", r.d4_level);
    let rnd = format!("random directions {:.3}", r.random_directions.mean);
    let mut lines = vec![
        RefLine {
            label: &welch,
            y: r.welch_bound,
        },
        RefLine {
            label: &rnd,
            y: r.random_directions.mean,
        },
    ];
    // the D4 level is the 12-lines-in-4-dimensions optimum; draw it only for that shape
    if r.features.len() == 12 && r.settings.d_model == 4 {
        lines.insert(
            1,
            RefLine {
                label: &d4,
                y: r.d4_level,
            },
        );
    }
    let title = format!(
        "Toy: entanglement vs data share ({} seeds, mean ± 95% CI; {} at layer {})",
        r.seeds,
        match r.probe.hook {
            Hook::ResidPre => "resid_pre",
            Hook::ResidPost => "resid_post",
        },
        r.probe.layer
    );
    let series = [
        Line::new(rare_label, rare).color(1),
        Line::new(other_label, others).color(0),
    ];
    chart(
        path,
        &Chart {
            ref_lines: &lines,
            y_range: Some((0.0, 1.0)),
            dodge: 0.008,
            legend: Legend::LowerRight,
            ..Chart::new(
                &title,
                "share of training sequences from the underrepresented chain",
                "entanglement: max |cos| with another feature",
                &series,
            )
        },
    )
}
