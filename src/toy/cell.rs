//! One (share, seed) cell: train a fresh model on the chains and keep its residual streams; then
//! (any number of times, with any probe settings) probe them and measure entanglement.
//!
//! Training is a small in-memory loop over the project's own parts, because the data is
//! synthetic: [`Model::forward_backward`] on the CPU executor, the global gradient norm and
//! clip, [`AdamW`] (no decay on the embedding, as in `train`) and the [`CosineSchedule`].

use anyhow::{bail, ensure, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::chains::{Feature, ToyChains};
use super::entanglement::{entanglement, probe_directions, FeatureProbe, TokenRows};
use super::{CellSettings, Hook, ProbeSettings};
use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::model::{init_params, Model};
use crate::optim::adamw::{clip_scale, global_norm};
use crate::optim::{AdamW, AdamWConfig, CosineSchedule};
use crate::probe::logistic::LogisticConfig;

/// Stream of the seed's ChaCha8 generator that draws the training rows (the model's
/// initialisation uses its own streams of the same seed, see [`init_params`]).
const DATA_STREAM: u64 = 1;

/// Steps averaged for [`CellResult::final_loss`].
const LOSS_TAIL: usize = 50;

/// One residual stream of the 12 feature sequences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// The activation's name (`blocks.0.hook_resid_pre` is the embedding).
    pub hook: String,
    /// `[features, seq, d_model]` row-major, features in [`ToyChains::features`] order.
    pub values: Vec<f32>,
}

/// The result of one cell, as saved in `cells/share-…-seed-….json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Share of the underrepresented chain in the training rows.
    pub share: f64,
    /// Seed of the initialisation and of the data.
    pub seed: u64,
    /// The settings it was trained with.
    pub settings: CellSettings,
    /// Mean training loss of the last 50 steps (nats per token).
    pub final_loss: f64,
    /// The lowest mean loss any model can reach on this mixture (nats per token): the
    /// entropy of the next token given the prefix, averaged over positions and rows.
    pub loss_floor: f64,
    /// Per chain: the model's mean loss on that chain's sequences (nats per token).
    pub chain_loss: Vec<f64>,
    /// Per chain: the lowest mean loss any model can reach on that chain's sequences, given the
    /// mixture (its position-0 prediction cannot know the chain).
    pub chain_floor: Vec<f64>,
    /// Every residual stream of the trained model on each feature's sequence: the embedding,
    /// then each block's output.
    pub streams: Vec<Stream>,
    /// Wall-clock seconds of training and recording.
    pub seconds: f64,
}

/// The Bayes-optimal mean cross-entropy of the training rows of [`ToyChains::sample_rows`] over
/// `seq` predicted positions: at each position the next token is predicted from the posterior
/// over the features whose sequences share the prefix so far.
pub fn loss_floor(chains: &ToyChains, rare: usize, share: f64, seq: usize) -> f64 {
    loss_floor_on(chains, rare, share, seq, &|_| true)
}

/// The Bayes-optimal predictor's mean cross-entropy (as in [`loss_floor`], the posterior from
/// the whole mixture) on the rows of the features `on` selects, weighted by their prior.
pub fn loss_floor_on(
    chains: &ToyChains,
    rare: usize,
    share: f64,
    seq: usize,
    on: &dyn Fn(Feature) -> bool,
) -> f64 {
    let feats = chains.features();
    let prior: Vec<f64> = feats
        .iter()
        .map(|f| {
            chains.chain_prob(f.chain, rare, share) / chains.chains[f.chain].tokens.len() as f64
        })
        .collect();
    let seqs: Vec<Vec<u32>> = feats.iter().map(|&f| chains.sequence(f, seq + 1)).collect();
    let (mut total, mut weight) = (0.0, 0.0);
    for (i, &f) in feats.iter().enumerate() {
        if !on(f) {
            continue;
        }
        // weighted by the row's prior; its loss at p: −log of the posterior predictive of its
        // next token given its prefix
        let w = prior[i];
        let mut row = 0.0;
        for p in 0..seq {
            let same: Vec<usize> = (0..feats.len())
                .filter(|&j| seqs[j][..=p] == seqs[i][..=p])
                .collect();
            let mass: f64 = same.iter().map(|&j| prior[j]).sum();
            let hit: f64 = same
                .iter()
                .filter(|&&j| seqs[j][p + 1] == seqs[i][p + 1])
                .map(|&j| prior[j])
                .sum();
            if mass > 0.0 && hit > 0.0 {
                row -= (hit / mass).ln();
            }
        }
        total += w * row / seq as f64;
        weight += w;
    }
    if weight > 0.0 {
        total / weight
    } else {
        f64::NAN
    }
}

/// Trains a fresh model for one (share, seed) and records its residual streams on the
/// features' sequences; `tick` is called once per optimizer step.
pub fn train_cell(
    chains: &ToyChains,
    s: &CellSettings,
    share: f64,
    seed: u64,
    tick: &(dyn Fn() + Sync),
) -> Result<CellResult> {
    let t0 = std::time::Instant::now();
    let cfg = s.model_config(chains.vocab);
    let mut model = Model::new(cfg.clone(), Cpu::<f32>::new())?;
    let layout = model.layout.clone();
    let mut params = init_params(&cfg, &layout, seed);
    let mut grads = model.alloc_params()?;
    let embed_len = layout.tensors[0].len();
    let mut opt = AdamW::new(
        AdamWConfig {
            weight_decay: s.weight_decay,
            ..AdamWConfig::default()
        },
        layout.len(),
        embed_len,
    );
    let sched = CosineSchedule {
        lr: s.lr,
        warmup: s.warmup,
        total_steps: s.steps,
        final_frac: s.final_lr_frac,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(DATA_STREAM);
    let mut losses = Vec::with_capacity(s.steps as usize);
    for step in 0..s.steps {
        let rows = chains.sample_rows(&mut rng, s.rare_chain, share, s.batch, s.seq + 1);
        let loss =
            model.forward_backward(&params, &mut grads, &rows, s.batch, s.seq, false, 1.0)?;
        let norm = global_norm(&grads);
        if !loss.is_finite() || !norm.is_finite() {
            bail!("step {step}: loss {loss}, gradient norm {norm}: try a lower --lr");
        }
        opt.update(
            &mut params,
            &grads,
            sched.at(step),
            clip_scale(norm, s.grad_clip),
        );
        losses.push(loss);
        tick();
    }
    let tail = &losses[losses.len().saturating_sub(LOSS_TAIL)..];
    let final_loss = tail.iter().sum::<f64>() / tail.len() as f64;

    // Each chain's loss on its own sequences, against the best any model can do on them.
    let feats = chains.features();
    let mut chain_loss = Vec::with_capacity(chains.chains.len());
    let mut chain_floor = Vec::with_capacity(chains.chains.len());
    for c in 0..chains.chains.len() {
        let mine: Vec<Feature> = feats.iter().copied().filter(|f| f.chain == c).collect();
        let rows: Vec<u32> = mine
            .iter()
            .flat_map(|&f| chains.sequence(f, s.seq + 1))
            .collect();
        chain_loss.push(model.loss(&params, &rows, mine.len(), s.seq)?);
        chain_floor.push(loss_floor_on(chains, s.rare_chain, share, s.seq, &|f| {
            f.chain == c
        }));
    }

    // Every feature's sequence once; every residual stream at every position.
    let seqs: Vec<Vec<u32>> = feats.iter().map(|&f| chains.sequence(f, s.seq)).collect();
    let ids: Vec<u32> = seqs.iter().flatten().copied().collect();
    model.logits(&params, &ids, feats.len(), s.seq)?;
    let mut streams = Vec::with_capacity(s.n_layers + 1);
    for k in 0..=s.n_layers {
        let hook = stream_name(k);
        let (buf, b, t) = model
            .activation(&hook)
            .with_context(|| format!("no activation {hook}"))?;
        ensure!(b == feats.len() && t == s.seq, "{hook}: shape [{b}, {t}]");
        let mut values = model.backend().download(buf)?;
        values.truncate(b * t * s.d_model);
        streams.push(Stream { hook, values });
    }
    Ok(CellResult {
        share,
        seed,
        settings: s.clone(),
        final_loss,
        loss_floor: loss_floor(chains, s.rare_chain, share, s.seq),
        chain_loss,
        chain_floor,
        streams,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The name of residual stream `k`: `blocks.0.hook_resid_pre` (the embedding) for 0,
/// `blocks.{k−1}.hook_resid_post` after.
pub fn stream_name(k: usize) -> String {
    if k == 0 {
        Hook::ResidPre.name(0)
    } else {
        Hook::ResidPost.name(k - 1)
    }
}

/// What the probes found on one residual stream of one cell.
#[derive(Clone, Debug, PartialEq)]
pub struct Probed {
    /// Per feature: largest |cos| with any other feature (NaN where the probes found no
    /// direction, as at the embedding).
    pub entanglement: Vec<f64>,
    /// Per feature: the mean of its per-token probes' unit normals.
    pub directions: Vec<Vec<f64>>,
    /// Per feature, per token: the probe's accuracy on the positions it was fit on.
    pub accuracy: Vec<Vec<Option<f64>>>,
    /// Per feature, per token: the probe's ROC AUC on those positions.
    pub auc: Vec<Vec<Option<f64>>>,
}

/// Probes stream `k` of a cell (see [`stream_name`]) with the given settings (their hook and
/// layer are not used: `k` says which stream).
pub fn probe_stream(
    chains: &ToyChains,
    cell: &CellResult,
    k: usize,
    p: &ProbeSettings,
) -> Result<Probed> {
    let s = &cell.settings;
    let stream = cell
        .streams
        .get(k)
        .with_context(|| format!("the cell has no residual stream {k}"))?;
    let feats = chains.features();
    let d = s.d_model;
    ensure!(
        stream.values.len() == feats.len() * s.seq * d,
        "{}: {} values, expected features {} x seq {} x d_model {d}",
        stream.hook,
        stream.values.len(),
        feats.len(),
        s.seq
    );
    let mut per_token: Vec<(Vec<f64>, Vec<usize>)> = vec![(Vec::new(), Vec::new()); chains.vocab];
    for (fi, &f) in feats.iter().enumerate() {
        let sq = chains.sequence(f, s.seq);
        for (pos, &tok) in sq.iter().enumerate().skip(p.probe_from) {
            let row = &stream.values[(fi * s.seq + pos) * d..(fi * s.seq + pos + 1) * d];
            let slot = &mut per_token[tok as usize];
            slot.0.extend(row.iter().map(|&x| x as f64));
            slot.1.push(fi);
        }
    }
    let rows: Vec<TokenRows> = per_token
        .iter()
        .enumerate()
        .filter(|(_, (_, f))| !f.is_empty())
        .map(|(tok, (x, f))| TokenRows {
            token: tok as u32,
            x,
            feature: f,
        })
        .collect();
    let lcfg = LogisticConfig {
        l2: p.probe_l2,
        ..LogisticConfig::default()
    };
    let probes = probe_directions(&rows, feats.len(), d, p.negatives, &lcfg)
        .with_context(|| format!("probing {}", stream.hook))?;
    let directions: Vec<Vec<f64>> = probes.iter().map(|p| p.direction.clone()).collect();
    let entanglement = entanglement(&directions)?;
    // per feature, a per-token table (None where that token had no probe)
    let by_token = |pick: &dyn Fn(&FeatureProbe) -> &[f64]| {
        probes
            .iter()
            .map(|fp| {
                let mut t = vec![None; chains.vocab];
                for (tr, a) in rows.iter().zip(pick(fp)) {
                    t[tr.token as usize] = a.is_finite().then_some(*a);
                }
                t
            })
            .collect::<Vec<_>>()
    };
    Ok(Probed {
        entanglement,
        directions,
        accuracy: by_token(&|fp| &fp.accuracy),
        auc: by_token(&|fp| &fp.auc),
    })
}
