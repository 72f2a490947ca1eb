//! Model weights in Hugging Face's safetensors layout, read into the flat fp32 parameter buffer.
//!
//! A checkpoint directory holds its weights either in one `model.safetensors` or, as
//! `save_pretrained` shards them, in `model-0000N-of-0000M.safetensors` files named by
//! `model.safetensors.index.json` (`{"metadata": {"total_size": …}, "weight_map": {tensor:
//! shard}}`). When both are present the single file wins, as in `transformers`. Tensors are
//! f32, bf16 or f16 under HF OLMo names ([`ParamLayout`]); `lm_head.weight` is read when the
//! config is untied, and, when tied, may be present only as an exact copy of the embedding.
//! `*.rotary_emb.inv_freq` buffers (older exports) are ignored; any other tensor is an error,
//! since OLMo v1 has no such weight (a layernorm weight or a bias would change the math).
//!
//! Memory: every file is memory-mapped (memmap2), never read into a `Vec`. A first pass reads
//! only the headers and checks every tensor's name, dtype and shape (the `safetensors` crate
//! checks each header's offsets against the file's size); only then is the fp32 buffer
//! allocated, and a second pass converts each tensor straight from the mapped bytes into its
//! place in that buffer, one shard mapped at a time. Nothing else proportional to the weights
//! is allocated: loading holds the fp32 buffer plus the pages of the shard being read (file
//! pages, which the kernel can drop), measured in docs/ARCHITECTURE.md ("Loading released
//! checkpoints"). The parameter count a config declares is checked, with overflow-checked
//! arithmetic, against the bytes the files hold before any buffer is sized from it, so arbitrary
//! bytes give an error, not a panic or an allocation beyond the files' size.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::config::ModelConfig;
use crate::model::params::ParamLayout;

/// Name of a single-file checkpoint's weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Loads with more tensor bytes than this show a progress bar (on a terminal).
const PROGRESS_BYTES: u64 = 256 << 20;
/// Elements converted per rayon task.
const CHUNK: usize = 1 << 16;

/// Whether `dir` holds model weights (a `model.safetensors` or a sharded index).
pub fn holds_weights(dir: &Path) -> bool {
    dir.join(SINGLE_FILE).is_file() || dir.join(INDEX_FILE).is_file()
}

/// Where each tensor of a checkpoint directory lives.
struct Sources {
    /// The file the tensor names come from in errors: the index, or the single file.
    origin: PathBuf,
    /// Tensor name → the file holding it.
    file_of: BTreeMap<String, PathBuf>,
    /// The distinct files, in a fixed order.
    files: Vec<PathBuf>,
}

/// Reads the index (or takes the single file) of the checkpoint directory `dir`.
fn sources(dir: &Path) -> Result<Sources> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    if single.is_file() {
        let names: Vec<String> = with_file(&single, |st| {
            Ok(st.names().into_iter().map(String::from).collect())
        })?;
        return Ok(Sources {
            origin: single.clone(),
            file_of: names.into_iter().map(|n| (n, single.clone())).collect(),
            files: vec![single],
        });
    }
    if !index.is_file() {
        bail!(
            "{}: holds neither {SINGLE_FILE} nor {INDEX_FILE}",
            dir.display()
        );
    }
    let text =
        std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| {
            format!(
                "{}: no \"weight_map\" object (expected {{\"weight_map\": {{tensor: shard file}}}})",
                index.display()
            )
        })?;
    let mut file_of = BTreeMap::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, shard) in map {
        let Some(shard) = shard.as_str() else {
            bail!(
                "{}: weight_map[{name:?}] = {shard}: expected a shard file name",
                index.display()
            );
        };
        if shard.is_empty() || shard.contains(['/', '\\']) || shard == "." || shard == ".." {
            bail!(
                "{}: weight_map[{name:?}] = {shard:?}: expected a file name in the checkpoint directory",
                index.display()
            );
        }
        let path = dir.join(shard);
        if !path.is_file() {
            bail!(
                "{}: shard {shard:?} (holding {name:?}) does not exist: no file {}",
                index.display(),
                path.display()
            );
        }
        if !files.contains(&path) {
            files.push(path.clone());
        }
        file_of.insert(name.clone(), path);
    }
    files.sort();
    Ok(Sources {
        origin: index,
        file_of,
        files,
    })
}

/// Maps `path` and runs `f` on its parsed safetensors view.
fn with_file<T>(path: &Path, f: impl FnOnce(&SafeTensors) -> Result<T>) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is opened and mapped read-only for the duration of this call; as with any
    // memory map, another process truncating it meanwhile would fault the reads (checkpoint
    // directories are not written while they are loaded; ours are renamed into place whole).
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
    let st = parse(&map, path)?;
    f(&st)
}

/// The safetensors view of `bytes` (a file's contents), `path` naming it in errors. The header's
/// offsets and shapes are checked against `bytes.len()` by the `safetensors` crate.
fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))
}

/// Tensor `t` of `file` (parsed as `st`), with the shape `t` has and a dtype that converts; errors
/// name `file`, the tensor, and `origin` (the index that placed it there).
fn checked_view<'a>(
    st: &'a SafeTensors,
    t: &crate::model::params::TensorSpec,
    file: &Path,
    origin: &Path,
) -> Result<safetensors::tensor::TensorView<'a>> {
    let v = st.tensor(&t.name).map_err(|_| {
        anyhow::anyhow!(
            "{}: holds no tensor {:?}, which {} places there",
            file.display(),
            t.name,
            origin.display()
        )
    })?;
    if v.shape() != t.shape.as_slice() {
        bail!(
            "{}: tensor {:?} has shape {:?}, but config.json implies {:?}",
            file.display(),
            t.name,
            v.shape(),
            t.shape
        );
    }
    if dtype_bytes(v.dtype()).is_none() {
        bail!(
            "{}: tensor {:?} has dtype {:?}, expected F32, BF16 or F16",
            file.display(),
            t.name,
            v.dtype()
        );
    }
    Ok(v)
}

/// Whether HF exports may carry `name` beside the weights without it meaning anything.
fn ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// `n_layers·(4D² + 3DF) + V·D (+ V·D untied)` with overflow checks (`None` on overflow).
fn checked_param_count(cfg: &ModelConfig) -> Option<usize> {
    let (l, d, f, v) = (cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size);
    let attn = d.checked_mul(d)?.checked_mul(4)?;
    let mlp = d.checked_mul(f)?.checked_mul(3)?;
    let per_layer = attn.checked_add(mlp)?;
    let table = v.checked_mul(d)?;
    let heads = if cfg.tie_word_embeddings { 1 } else { 2 };
    l.checked_mul(per_layer)?
        .checked_add(table.checked_mul(heads)?)
}

/// Bytes per element of the dtypes weights may come in.
fn dtype_bytes(d: Dtype) -> Option<usize> {
    match d {
        Dtype::F32 => Some(4),
        Dtype::BF16 | Dtype::F16 => Some(2),
        _ => None,
    }
}

/// Converts the little-endian `src` (of dtype `dt`) into `dst`, in parallel chunks.
fn convert(dst: &mut [f32], src: &[u8], dt: Dtype) {
    let size = dtype_bytes(dt).expect("dtype checked before conversion");
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK * size))
        .for_each(|(d, s)| match dt {
            Dtype::F32 => {
                for (d, c) in d.iter_mut().zip(s.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::BF16 => {
                for (d, c) in d.iter_mut().zip(s.chunks_exact(2)) {
                    *d = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            _ => {
                for (d, c) in d.iter_mut().zip(s.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        });
}

/// The HF names of the tensors of `cfg`'s first `layers` layers, in [`ParamLayout`] order (the
/// embedding first, the untied head last when all layers are listed).
fn tensor_names(cfg: &ModelConfig, layers: usize) -> impl Iterator<Item = String> + '_ {
    const PER_LAYER: [&str; 7] = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    let head =
        (!cfg.tie_word_embeddings && layers == cfg.n_layers).then(|| "lm_head.weight".into());
    std::iter::once("model.embed_tokens.weight".to_string())
        .chain((0..layers).flat_map(move |l| {
            PER_LAYER
                .iter()
                .map(move |t| format!("model.layers.{l}.{t}.weight"))
        }))
        .chain(head)
}

/// Why a missing `name` is expected, when it is the untied head.
fn untied_hint(name: &str) -> &'static str {
    if name == "lm_head.weight" {
        " (config.json says tie_word_embeddings is false, or leaves it out: OlmoConfig's default \
         is false)"
    } else {
        ""
    }
}

/// Checks `cfg` against the tensors available (`names`, in files of `bytes` in all) before
/// [`ParamLayout::new`] is built from it: the declared tensors must be there (else the first
/// missing one is named) and the parameter count, computed without overflow, must fit the bytes.
fn check_size<T>(
    cfg: &ModelConfig,
    origin: &Path,
    names: &BTreeMap<String, T>,
    bytes: u64,
) -> Result<()> {
    let need = cfg
        .n_layers
        .checked_mul(7)
        .and_then(|t| t.checked_add(if cfg.tie_word_embeddings { 1 } else { 2 }));
    if need.map_or(true, |t| t > names.len()) {
        // Too few tensors: name the first missing one (listing at most one layer past what the
        // files could hold, so a huge declared depth does not loop for long).
        let layers = cfg.n_layers.min(names.len() / 7 + 1);
        let missing = tensor_names(cfg, layers)
            .find(|n| !names.contains_key(n))
            .unwrap_or_else(|| format!("model.layers.{layers}.self_attn.q_proj.weight"));
        bail!(
            "{}: tensor {missing:?} is missing{} (config.json declares {} layers, the weights \
             hold {} tensors)",
            origin.display(),
            untied_hint(&missing),
            cfg.n_layers,
            names.len()
        );
    }
    let n = checked_param_count(cfg).with_context(|| {
        format!(
            "{}: config.json declares a model too large to address ({cfg:?})",
            origin.display()
        )
    })?;
    // every element takes at least 2 bytes (bf16, f16) in the files
    if (n as u64).saturating_mul(2) > bytes {
        bail!(
            "{}: config.json declares {n} parameters, more than {bytes} bytes of weight files can \
             hold (its shapes disagree with the tensors')",
            origin.display()
        );
    }
    Ok(())
}

/// Reads the weights of the checkpoint directory `dir` (single file or sharded, see the module
/// docs) into a flat fp32 buffer laid out as [`ParamLayout::new`]`(cfg)`. Errors name the file
/// and the tensor: a missing shard or tensor, a shape or dtype that differs from what `cfg`
/// expects, a tensor OLMo v1 does not have, an untied head where the config is tied (unless an
/// exact copy of the embedding).
pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Vec<f32>> {
    let src = sources(dir)?;
    let mut bytes = 0u64;
    for f in &src.files {
        bytes += std::fs::metadata(f)
            .with_context(|| format!("reading the size of {}", f.display()))?
            .len();
    }
    read(&src, bytes, cfg, &|path, f| with_file(path, |st| f(st)))
}

/// Reads the weights of ONE safetensors file's contents `bytes` (what [`load`] reads from a
/// `model.safetensors`; `path` names it in errors) for `cfg`, with the same checks. Arbitrary
/// bytes give an error, never a panic, and nothing is allocated beyond the header's size and,
/// once every tensor is checked against `bytes`, the fp32 output (at most twice `bytes.len()`).
pub fn load_bytes(bytes: &[u8], path: &Path, cfg: &ModelConfig) -> Result<Vec<f32>> {
    let st = parse(bytes, path)?;
    let src = Sources {
        origin: path.to_path_buf(),
        file_of: st
            .names()
            .into_iter()
            .map(|n| (n.to_string(), path.to_path_buf()))
            .collect(),
        files: vec![path.to_path_buf()],
    };
    read(&src, bytes.len() as u64, cfg, &|_, f| f(&st))
}

/// Runs a closure on the parsed contents of one of the files.
type Visit<'a> = dyn Fn(&Path, &mut dyn FnMut(&SafeTensors) -> Result<()>) -> Result<()> + 'a;

/// [`load`] over the files of `src` (`bytes` in all), each reached through `visit`.
fn read(src: &Sources, bytes: u64, cfg: &ModelConfig, visit: &Visit) -> Result<Vec<f32>> {
    // every file a valid safetensors file (headers checked against their sizes) first
    for file in &src.files {
        visit(file, &mut |_| Ok(()))?;
    }
    check_size(cfg, &src.origin, &src.file_of, bytes)?;
    let layout = ParamLayout::new(cfg);

    // Every tensor the files name must be one of the model's (or ignorable).
    let tied_copy = cfg.tie_word_embeddings && src.file_of.contains_key("lm_head.weight");
    for name in src.file_of.keys() {
        if layout.get(name).is_none()
            && !ignorable(name)
            && !(tied_copy && name == "lm_head.weight")
        {
            bail!(
                "{}: tensor {name:?} is not a weight of an OLMo v1 model with this config.json \
                 (OlmoForCausalLM has no such parameter{})",
                src.origin.display(),
                if name.starts_with("model.") {
                    "; a layernorm weight or a bias would be another architecture"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(t) = layout
        .tensors
        .iter()
        .find(|t| !src.file_of.contains_key(&t.name))
    {
        bail!(
            "{}: tensor {:?} is missing{}",
            src.origin.display(),
            t.name,
            untied_hint(&t.name)
        );
    }
    // Pass 1: headers only. Every tensor of the layout is where the index says, with its shape
    // and a dtype that converts.
    let mut total = 0u64;
    for file in &src.files {
        visit(file, &mut |st| {
            for t in layout
                .tensors
                .iter()
                .filter(|t| src.file_of.get(&t.name) == Some(file))
            {
                total += checked_view(st, t, file, &src.origin)?.data().len() as u64;
            }
            Ok(())
        })?;
    }

    // Pass 2: the fp32 buffer, filled file by file from the mapped bytes.
    let bar = if total > PROGRESS_BYTES {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} loading weights {bar:32} {bytes}/{total_bytes}  {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut out = vec![0f32; layout.len()];
    for file in &src.files {
        bar.set_message(
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        visit(file, &mut |st| {
            for t in layout
                .tensors
                .iter()
                .filter(|t| src.file_of.get(&t.name) == Some(file))
            {
                // checked again: a file may be replaced between the passes
                let v = checked_view(st, t, file, &src.origin)?;
                convert(&mut out[t.range()], v.data(), v.dtype());
                bar.inc(v.data().len() as u64);
            }
            Ok(())
        })?;
    }
    bar.finish_and_clear();
    if tied_copy {
        let file = &src.file_of["lm_head.weight"];
        visit(file, &mut |st| check_tied_copy(st, file, &layout, &out))?;
    }
    Ok(out)
}

/// A tied config whose files also hold `lm_head.weight`: it must equal the embedding exactly.
fn check_tied_copy(st: &SafeTensors, file: &Path, layout: &ParamLayout, out: &[f32]) -> Result<()> {
    let v = st
        .tensor("lm_head.weight")
        .map_err(|_| anyhow::anyhow!("{}: holds no tensor \"lm_head.weight\"", file.display()))?;
    let embed = &layout.tensors[0];
    ensure!(
        v.shape() == embed.shape.as_slice() && dtype_bytes(v.dtype()).is_some(),
        "{}: tensor \"lm_head.weight\" has shape {:?} and dtype {:?}, but config.json ties it to the \
         embedding {:?}",
        file.display(),
        v.shape(),
        v.dtype(),
        embed.shape
    );
    let mut row = vec![0f32; embed.shape[1]];
    let size = dtype_bytes(v.dtype()).unwrap_or(4);
    for (r, bytes) in v.data().chunks_exact(row.len() * size).enumerate() {
        convert(&mut row, bytes, v.dtype());
        let e = &out[embed.offset + r * row.len()..][..row.len()];
        if row.iter().zip(e).any(|(a, b)| a.to_bits() != b.to_bits()) {
            bail!(
                "{}: config.json says tie_word_embeddings is true, but \"lm_head.weight\" differs \
                 from \"model.embed_tokens.weight\" (row {r}): set tie_word_embeddings to false \
                 to use it as the output layer",
                file.display()
            );
        }
    }
    Ok(())
}
