//! Toxicity directions and the intervention file that carries them to inference.
//!
//! For each chosen head, a unit direction `u` in its `hook_z` space (pointing toward toxic) and
//! `σ`, the standard deviation over all probing texts of the activations projected on it. ITI at
//! strength α adds `−α·σ·u` to that head's `hook_z` ([`Intervention::head_shifts`]).
//!
//! - mass-mean: `u = normalise(mean(toxic) − mean(non-toxic))` over all probing texts;
//! - probe: `u = normalise(w_raw)`, the probe's weights mapped back from standardised space
//!   (`w_raw_j = w_j / s_j`), fitted on the training split.
//!
//! `intervention.json`:
//! ```text
//! { "format": "baddata-intervention", "version": 1,
//!   "hook": "blocks.{l}.attn.hook_z", "position": "last token", "direction_kind": "mass-mean",
//!   "model": { "config": <config.json object>, "weights_hash": "fnv1a64:…", "n_params": N },
//!   "heads": [ { "layer", "head", "direction": [dh floats], "sigma", "probe_accuracy" }, … ],
//!   "probing": { … free-form: data, counts, seed … } }
//! ```
//! The model's identity lets a consumer refuse the file for any other model
//! ([`Intervention::check_model`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;

/// Where a head's direction comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionKind {
    /// Mean of toxic minus mean of non-toxic activations, normalised.
    MassMean,
    /// The probe's weight vector in activation space, normalised.
    Probe,
}

impl DirectionKind {
    /// The name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            DirectionKind::MassMean => "mass-mean",
            DirectionKind::Probe => "probe",
        }
    }
}

/// `v / ‖v‖`; an error for a zero (or non-finite) vector.
pub fn normalise(v: &[f64]) -> Result<Vec<f64>> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    ensure!(
        norm.is_finite() && norm > 0.0,
        "cannot normalise a direction of norm {norm}"
    );
    Ok(v.iter().map(|x| x / norm).collect())
}

/// `normalise(mean of rows labelled 1 − mean of rows labelled 0)` over rows `x` `[n, d]`.
pub fn mass_mean_direction(x: &[f64], labels: &[u8], d: usize) -> Result<Vec<f64>> {
    ensure!(
        x.len() == labels.len() * d,
        "mass-mean: {} values for {} rows of {d}",
        x.len(),
        labels.len()
    );
    let (mut m0, mut m1) = (vec![0.0; d], vec![0.0; d]);
    let (mut n0, mut n1) = (0usize, 0usize);
    for (row, &l) in x.chunks_exact(d).zip(labels) {
        let (m, n) = if l == 1 {
            (&mut m1, &mut n1)
        } else {
            (&mut m0, &mut n0)
        };
        m.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        *n += 1;
    }
    ensure!(
        n0 > 0 && n1 > 0,
        "mass-mean: needs texts of both classes ({n0} non-toxic, {n1} toxic)"
    );
    let diff: Vec<f64> = m1
        .iter()
        .zip(&m0)
        .map(|(a, b)| a / n1 as f64 - b / n0 as f64)
        .collect();
    normalise(&diff).context("mass-mean: the class means coincide")
}

/// Population standard deviation of `x·u` over the rows of `x` `[n, d]`.
pub fn projection_std(x: &[f64], d: usize, u: &[f64]) -> f64 {
    let proj: Vec<f64> = x
        .chunks_exact(d)
        .map(|r| r.iter().zip(u).map(|(a, b)| a * b).sum())
        .collect();
    let n = proj.len().max(1) as f64;
    let mean = proj.iter().sum::<f64>() / n;
    (proj.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// 64-bit FNV-1a over the little-endian bytes of the f32 parameters, as `fnv1a64:<16 hex>`.
pub fn weights_hash(params: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in params {
        for b in p.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("fnv1a64:{h:016x}")
}

/// One steered head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadDirection {
    /// Layer.
    pub layer: usize,
    /// Head within the layer.
    pub head: usize,
    /// Unit direction in the head's `hook_z` space (`d_head` values), pointing toward toxic.
    pub direction: Vec<f32>,
    /// Standard deviation of the activations projected on `direction`, over all probing texts.
    pub sigma: f32,
    /// The head's probe validation accuracy.
    pub probe_accuracy: f64,
}

/// The model an intervention was made for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The model's `config.json` object ([`ModelConfig::to_hf_config`]).
    pub config: serde_json::Value,
    /// [`weights_hash`] of its parameters.
    pub weights_hash: String,
    /// Number of parameters.
    pub n_params: usize,
}

impl ModelIdentity {
    /// The identity of a model.
    pub fn of(config: &ModelConfig, params: &[f32]) -> Self {
        ModelIdentity {
            config: config.to_hf_config(),
            weights_hash: weights_hash(params),
            n_params: params.len(),
        }
    }
}

/// Value of `"format"` in every intervention file.
pub const FORMAT: &str = "baddata-intervention";
/// Version of the intervention file layout.
pub const VERSION: u32 = 1;

/// The contents of `intervention.json` (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intervention {
    /// Always [`FORMAT`].
    pub format: String,
    /// File layout version ([`VERSION`]).
    pub version: u32,
    /// The hook the directions live in: `blocks.{l}.attn.hook_z`.
    pub hook: String,
    /// Token position the probes were trained at.
    pub position: String,
    /// How the directions were made.
    pub direction_kind: DirectionKind,
    /// The model they were made for.
    pub model: ModelIdentity,
    /// The steered heads, best probe first.
    pub heads: Vec<HeadDirection>,
    /// Free-form description of the probing run (data, counts, seed, ...).
    #[serde(default)]
    pub probing: serde_json::Value,
    /// Where the file was read from (not serialised).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl Intervention {
    /// A new intervention for the model `(config, params)`.
    pub fn new(
        config: &ModelConfig,
        params: &[f32],
        direction_kind: DirectionKind,
        heads: Vec<HeadDirection>,
        probing: serde_json::Value,
    ) -> Self {
        Intervention {
            format: FORMAT.into(),
            version: VERSION,
            hook: "blocks.{l}.attn.hook_z".into(),
            position: "last token".into(),
            direction_kind,
            model: ModelIdentity::of(config, params),
            heads,
            probing,
            path: None,
        }
    }

    /// Writes the file as pretty JSON (through a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        crate::checkpoint::write_atomic(path, &json)
    }

    /// Reads and checks an intervention file: format, version, and each head's direction
    /// (`d_head` finite values of unit norm) and sigma (finite, ≥ 0).
    pub fn load(path: &Path) -> Result<Intervention> {
        let name = path.display();
        let bytes = std::fs::read(path).with_context(|| format!("reading intervention {name}"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).with_context(|| format!("{name}: invalid JSON"))?;
        let format = v.get("format").and_then(|f| f.as_str()).unwrap_or("");
        ensure!(
            format == FORMAT,
            "{name}: \"format\" is {format:?}, expected {FORMAT:?} (not an intervention file)"
        );
        let mut iv: Intervention = serde_json::from_value(v)
            .with_context(|| format!("{name}: not a valid intervention file"))?;
        ensure!(
            iv.version == VERSION,
            "{name}: version {} is not supported (expected {VERSION})",
            iv.version
        );
        let cfg = ModelConfig::from_hf_config(&iv.model.config)
            .with_context(|| format!("{name}: model.config"))?;
        let dh = cfg.d_head();
        for (k, h) in iv.heads.iter().enumerate() {
            ensure!(
                h.layer < cfg.n_layers && h.head < cfg.n_heads,
                "{name}: heads[{k}] is layer {} head {}, outside the model's {} layers × {} heads",
                h.layer,
                h.head,
                cfg.n_layers,
                cfg.n_heads
            );
            ensure!(
                h.direction.len() == dh,
                "{name}: heads[{k}].direction has {} values, expected d_head = {dh}",
                h.direction.len()
            );
            let norm = h
                .direction
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            ensure!(
                (norm - 1.0).abs() < 1e-3,
                "{name}: heads[{k}].direction has norm {norm}, expected a unit vector"
            );
            ensure!(
                h.sigma.is_finite() && h.sigma >= 0.0,
                "{name}: heads[{k}].sigma is {}, expected a finite value ≥ 0",
                h.sigma
            );
        }
        iv.path = Some(path.to_path_buf());
        Ok(iv)
    }

    fn name(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "intervention".to_string(), |p| p.display().to_string())
    }

    /// Refuses a model other than the one the intervention was made for: an error naming the
    /// file and what differs (config fields, or the weights' hash).
    pub fn check_model(&self, config: &ModelConfig, params: &[f32]) -> Result<()> {
        let name = self.name();
        let mine = ModelConfig::from_hf_config(&self.model.config)
            .with_context(|| format!("{name}: model.config"))?;
        if &mine != config {
            let a = serde_json::to_value(&mine)?;
            let b = serde_json::to_value(config)?;
            let diffs: Vec<String> = a
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| b.get(k.as_str()) != Some(*v))
                .map(|(k, v)| format!("{k}: {v} in the file, {} in the model", b[k.as_str()]))
                .collect();
            bail!(
                "{name} was made for another model: its config differs ({})",
                diffs.join("; ")
            );
        }
        let hash = weights_hash(params);
        if hash != self.model.weights_hash || params.len() != self.model.n_params {
            bail!(
                "{name} was made for another model: same config, but the weights differ \
                 (hash {} in the file, {hash} for this model's {} parameters)",
                self.model.weights_hash,
                params.len()
            );
        }
        Ok(())
    }

    /// A control for this intervention: the same heads and sigmas, each direction replaced by
    /// a random unit vector (Gaussian, seeded). Steering along it shows how much of an effect
    /// comes from the learned directions rather than from disturbing those heads at all.
    pub fn with_random_directions(&self, seed: u64) -> Intervention {
        use rand::{Rng, SeedableRng};
        // a standard normal by Box–Muller (1 − u keeps the logarithm finite)
        let normal = |rng: &mut rand_chacha::ChaCha8Rng| {
            let (u, v): (f64, f64) = (rng.random(), rng.random());
            (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = self.clone();
        for h in &mut out.heads {
            let mut v: Vec<f64> = (0..h.direction.len()).map(|_| normal(&mut rng)).collect();
            let n = v
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                .max(f64::MIN_POSITIVE);
            v.iter_mut().for_each(|x| *x /= n);
            h.direction = v.iter().map(|&x| x as f32).collect();
        }
        out.probing = serde_json::json!({"control": "random unit directions", "seed": seed, "of": self.probing});
        out.path = None;
        out
    }

    /// The ITI shift of every layer at strength `alpha`: `None` for layers without a steered
    /// head, else `[n_heads · d_head]` zeros with `−alpha · sigma · direction` at each steered
    /// head's slot (ready for `Model::set_head_shift`).
    pub fn head_shifts(&self, alpha: f64) -> Result<Vec<Option<Vec<f32>>>> {
        let cfg = ModelConfig::from_hf_config(&self.model.config)
            .with_context(|| format!("{}: model.config", self.name()))?;
        let dh = cfg.d_head();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; cfg.n_layers];
        for h in &self.heads {
            let layer = out[h.layer].get_or_insert_with(|| vec![0.0; cfg.d_model]);
            for (k, &u) in h.direction.iter().enumerate() {
                layer[h.head * dh + k] += (-alpha * h.sigma as f64 * u as f64) as f32;
            }
        }
        Ok(out)
    }
}
