//! `toy`: the paper's toy experiment (Section 2, Figure 3): feature entanglement against the
//! training share of an underrepresented chain, on synthetic cyclic Markov chains.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use baddata::toy::{
    run_toy, CellSettings, Hook, Negatives, ProbeSettings, RunOptions, ToyConfig, DEFAULT_SHARES,
};

/// The defaults of the training settings, for the flags' `default_value_t`.
fn d() -> CellSettings {
    CellSettings::default()
}

/// The defaults of the probe settings.
fn p() -> ProbeSettings {
    ProbeSettings::default()
}

#[derive(Parser, Debug)]
#[command(
    name = "toy",
    about = "The paper's toy experiment (Figure 3): entanglement of features against the share of an underrepresented chain",
    long_about = "Three deterministic cyclic Markov chains over 4 tokens; each (chain, start token) sequence is a feature, \
12 in all. For every share of the underrepresented chain and every seed, a fresh OLMo-style transformer with a \
4-dimensional residual stream is trained on the CPU (AdamW, cosine schedule) to predict the next token. Then, for \
every feature and every token, an L2 logistic probe on one layer's residual stream separates that feature's \
positions showing the token from the other features'; the feature's direction is the mean of its probes' unit \
normals. A feature's entanglement is its largest |cos| with any other feature's direction.\n\n\
Finished (share, seed) cells (the trained model's residual streams on the 12 sequences) are saved in OUT/cells/ \
and skipped when the command is run again with the same training settings (other training settings in the same \
OUT are refused). The probes run on the saved streams, so a rerun with other probe settings (--hook, --layer, \
--probe-from, --negatives, --probe-l2) trains nothing.\n\n\
Examples:\n  toy\n  toy --seeds 3 --shares 0.02,0.33 --out runs/toy-quick\n  toy --layer 2        (the same models, probed at block 2's output)",
    after_help = "Outputs in --out:\n  \
results.json     every setting, per share the per-seed entanglement of both groups with means and 95% t \
intervals, the paired gap, the Welch bound, the D4 level, the random-directions level\n  \
results.csv      the plotted numbers\n  \
entanglement.png both groups against the share, error bars over seeds, the reference lines\n  \
cells/           one JSON file per finished (share, seed): its settings, losses and residual streams"
)]
struct Args {
    /// Shares of training sequences drawn from the underrepresented chain, comma-separated, each
    /// in (0, 1); the other chains split the rest equally (1/3 is the balanced mixture)
    /// [default: 0.01,0.03,0.06,0.1,0.15,0.2,0.25,0.333333].
    #[arg(long, value_delimiter = ',')]
    shares: Option<Vec<f64>>,
    /// Seeds 0..N: seed s draws the initialisation and the data, the same at every share.
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// The chains: comma-separated cycles of token ids (each visits a token at most once).
    #[arg(long, default_value_t = d().chains)]
    chains: String,
    /// Index of the underrepresented chain in --chains.
    #[arg(long, default_value_t = d().rare_chain)]
    rare_chain: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = d().n_layers)]
    n_layers: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = d().d_model)]
    d_model: usize,
    /// Attention heads (d_model / n_heads must be even, for rotary embeddings).
    #[arg(long, default_value_t = d().n_heads)]
    n_heads: usize,
    /// Hidden width of the SwiGLU MLP (of gate and of up each).
    #[arg(long, default_value_t = d().d_ff)]
    d_ff: usize,
    /// Optimizer steps per cell.
    #[arg(long, default_value_t = d().steps)]
    steps: u64,
    /// Peak learning rate of AdamW.
    #[arg(long, default_value_t = d().lr)]
    lr: f32,
    /// Linear warm-up steps, then cosine decay.
    #[arg(long, default_value_t = d().warmup)]
    warmup: u64,
    /// Floor of the cosine decay, as a fraction of --lr.
    #[arg(long, default_value_t = d().final_lr_frac)]
    final_lr_frac: f32,
    /// AdamW decoupled weight decay (on the projections, not the embedding; betas 0.9, 0.95,
    /// eps 1e-5 as in `train`).
    #[arg(long, default_value_t = d().weight_decay)]
    weight_decay: f32,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = d().grad_clip)]
    grad_clip: f32,
    /// Sequences per step.
    #[arg(long, default_value_t = d().batch)]
    batch: usize,
    /// Tokens per sequence (training and probing).
    #[arg(long, default_value_t = d().seq)]
    seq: usize,
    /// Residual-stream activation the probes read.
    #[arg(long, value_enum, default_value_t = p().hook)]
    hook: Hook,
    /// Layer of --hook, 0-based [default: the last layer, n_layers - 1 (3 with the default
    /// --n-layers): with --hook resid-post, the stream the final layernorm and the head read].
    #[arg(long)]
    layer: Option<usize>,
    /// First position probed (position 0 shows only the start token, so all three chains look
    /// alike there).
    #[arg(long, default_value_t = p().probe_from)]
    probe_from: usize,
    /// What each (feature, token) probe is fit against: the other features' positions showing
    /// the same token, or every other position.
    #[arg(long, value_enum, default_value_t = p().negatives)]
    negatives: Negatives,
    /// L2 strength of the probes on standardised activations (scikit-learn's 1/C).
    #[arg(long, default_value_t = p().probe_l2)]
    probe_l2: f64,
    /// Output directory.
    #[arg(long, default_value = "runs/toy")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let a = Args::parse();
    let cfg = ToyConfig {
        cell: CellSettings {
            chains: a.chains,
            rare_chain: a.rare_chain,
            n_layers: a.n_layers,
            d_model: a.d_model,
            n_heads: a.n_heads,
            d_ff: a.d_ff,
            steps: a.steps,
            lr: a.lr,
            warmup: a.warmup,
            final_lr_frac: a.final_lr_frac,
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
            batch: a.batch,
            seq: a.seq,
        },
        probe: ProbeSettings {
            hook: a.hook,
            layer: a.layer.unwrap_or(a.n_layers.saturating_sub(1)),
            probe_from: a.probe_from,
            negatives: a.negatives,
            probe_l2: a.probe_l2,
        },
        shares: a.shares.unwrap_or_else(|| DEFAULT_SHARES.to_vec()),
        seeds: a.seeds,
        out: a.out,
    };
    let t0 = std::time::Instant::now();
    let r = run_toy(&cfg, RunOptions { progress: !a.quiet }).context("toy")?;
    let res = &r.results;
    println!(
        "toy: {} cells trained, {} reused, {:.1} s; {} features in {} dimensions: Welch bound {:.4}, random directions {:.4}",
        r.trained,
        r.reused,
        t0.elapsed().as_secs_f64(),
        res.features.len(),
        res.settings.d_model,
        res.welch_bound,
        res.random_directions.mean
    );
    println!(
        "{:>8}  {:>24}  {:>24}  {:>24}  {:>13}",
        "share", "underrepresented [95% CI]", "others [95% CI]", "gap [95% CI]", "loss / floor"
    );
    for p in &res.points {
        let ci = |m: &baddata::toy::summary::MeanCi| {
            format!("{:.3} [{:.3}, {:.3}]", m.mean, m.ci_lo, m.ci_hi)
        };
        println!(
            "{:>8.4}  {:>24}  {:>24}  {:>24}  {:>6.3}/{:.3}",
            p.share,
            ci(&p.rare),
            ci(&p.others),
            ci(&p.gap),
            p.final_loss.mean,
            p.loss_floor
        );
    }
    println!("probed stream: {}", res.hook);
    let rare = res.settings.rare_chain;
    println!(
        "excess loss over the floor of the underrepresented chain's sequences (nats/token), by share: {}",
        res.points
            .iter()
            .map(|p| format!("{:.3}", p.chain_excess_loss[rare].mean))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "probe ROC AUC (underrepresented / others), by share: {}",
        res.points
            .iter()
            .map(|p| format!(
                "{:.3}/{:.3}",
                p.rare_probe_auc.mean, p.others_probe_auc.mean
            ))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!("the same probes on every residual stream (underrepresented / others, by share):");
    for st in &res.streams {
        let cells: Vec<String> = st
            .points
            .iter()
            .map(|p| format!("{:.3}/{:.3}", p.rare.mean, p.others.mean))
            .collect();
        let change = st.gap_change.as_ref().map_or(String::new(), |g| {
            format!(
                "  gap change {:.3} [{:.3}, {:.3}]",
                g.summary.mean, g.summary.ci_lo, g.summary.ci_hi
            )
        });
        let cells = if cells.is_empty() {
            "no direction (a token looks the same in every feature)".to_string()
        } else {
            cells.join("  ")
        };
        println!("  {:<26} {cells}{change}", st.hook);
    }
    if let Some(g) = &res.gap_change {
        println!(
            "gap at share {:.4} minus gap at {:.4}: {:.3} [{:.3}, {:.3}] over {} seeds",
            g.from_share, g.to_share, g.summary.mean, g.summary.ci_lo, g.summary.ci_hi, g.summary.n
        );
    }
    println!("wrote {}", r.json.display());
    println!("wrote {}", r.csv.display());
    println!("wrote {}", r.png.display());
    Ok(())
}
