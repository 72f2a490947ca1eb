//! Measures the host memory of loading a checkpoint of OLMo-1B's size in Hugging Face's sharded
//! bf16 layout (docs/ARCHITECTURE.md, "Loading released checkpoints", records the numbers).
//!
//! ```text
//! cargo run --release --example load_memory -- write DIR [--untied]   # ~2.4 GB of bf16 shards
//! cargo run --release --example load_memory -- load DIR               # in a fresh process
//! rm -r DIR
//! ```
//!
//! `write` makes a synthetic checkpoint: OLMo-1B's config.json (`--untied`: OLMo-1B-0724's shape,
//! untied head and clip_qkv 8.0, 1.28e9 parameters) and seeded bf16 weights in shards of at most
//! 1 GiB with `model.safetensors.index.json`, written with the `safetensors` crate one shard at a
//! time. `load` reads it with [`baddata::checkpoint::load_model`] while a thread samples
//! `/proc/self/status` every millisecond, and reports the peak anonymous resident memory (RssAnon:
//! heap, not the memory-mapped file pages) above what the process held before, against the fp32
//! buffer plus one tensor (the largest, in fp32), the bound the loader promises; also the peak of
//! all resident memory (VmHWM, file pages included) and the time taken. Exit status 1 if the bound
//! is exceeded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baddata::config::ModelConfig;
use baddata::model::ParamLayout;
use baddata::weights;
use safetensors::tensor::{Dtype, TensorView};

const SHARD_BYTES: usize = 1 << 30;
/// Slack for what is not the model: thread stacks, allocator arenas, the index and headers.
const SLACK: u64 = 64 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write", dir] => write(Path::new(dir), false),
        ["write", dir, "--untied"] => write(Path::new(dir), true),
        ["load", dir] => load(Path::new(dir)),
        _ => bail!("usage: load_memory write DIR [--untied] | load DIR"),
    }
}

fn write(dir: &Path, untied: bool) -> Result<()> {
    let mut cfg = ModelConfig::preset("olmo-1b")?;
    if untied {
        cfg.tie_word_embeddings = false;
        cfg.clip_qkv = Some(8.0);
        cfg.context = 4096;
    }
    std::fs::create_dir_all(dir)?;
    let mut hf = cfg.to_hf_config();
    hf.as_object_mut()
        .context("config object")?
        .remove("baddata");
    hf["torch_dtype"] = "bfloat16".into();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&hf)?)?;
    let layout = ParamLayout::new(&cfg);
    // tensors grouped into shards of at most SHARD_BYTES (in layout order, as save_pretrained)
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, t) in layout.tensors.iter().enumerate() {
        if !groups.last().is_some_and(|g| g.is_empty()) && size + 2 * t.len() > SHARD_BYTES {
            groups.push(Vec::new());
            size = 0;
        }
        groups.last_mut().context("a group")?.push(i);
        size += 2 * t.len();
    }
    let mut map = serde_json::Map::new();
    for (k, g) in groups.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, groups.len());
        let data: Vec<Vec<u8>> = g
            .iter()
            .map(|&i| {
                let t = &layout.tensors[i];
                let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut b = Vec::with_capacity(2 * t.len());
                for _ in 0..t.len() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
                    b.extend(half::bf16::from_f32(v).to_le_bytes());
                }
                b
            })
            .collect();
        let views = g
            .iter()
            .zip(&data)
            .map(|(&i, b)| {
                let t = &layout.tensors[i];
                Ok((
                    t.name.clone(),
                    TensorView::new(Dtype::BF16, t.shape.clone(), b)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &dir.join(&name))?;
        for &i in g {
            map.insert(layout.tensors[i].name.clone(), name.clone().into());
        }
        eprintln!("wrote {name} ({} tensors)", g.len());
    }
    let index = serde_json::json!({
        "metadata": {"total_size": 2 * layout.len()},
        "weight_map": map,
    });
    std::fs::write(
        dir.join(weights::INDEX_FILE),
        serde_json::to_string_pretty(&index)?,
    )?;
    eprintln!(
        "{}: {} parameters in {} bf16 shards",
        dir.display(),
        layout.len(),
        groups.len()
    );
    Ok(())
}

/// A field of /proc/self/status in bytes (its value is in kB).
fn status_bytes(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn status() -> String {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default()
}

fn load(dir: &Path) -> Result<()> {
    let dir: PathBuf = dir.to_path_buf();
    let before = status_bytes(&status(), "RssAnon:");
    let peak = Arc::new(AtomicU64::new(before));
    let samples = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, samples, done) = (peak.clone(), samples.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(status_bytes(&status(), "RssAnon:"), Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let t0 = Instant::now();
    let ck = baddata::checkpoint::load_model(&dir)?;
    let secs = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler thread panicked"))?;
    let end = status();
    let after = status_bytes(&end, "RssAnon:");
    let peak = peak.load(Ordering::Relaxed).max(after);
    let layout = ParamLayout::new(&ck.config);
    let buffer = 4 * layout.len() as u64;
    let largest = layout
        .tensors
        .iter()
        .map(|t| 4 * t.len() as u64)
        .max()
        .unwrap_or(0);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let grew = peak - before;
    println!(
        "loaded {} parameters ({}, clip_qkv {:?}) from {} in {secs:.1} s",
        layout.len(),
        if ck.config.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        },
        ck.config.clip_qkv,
        dir.display()
    );
    println!(
        "anonymous memory (RssAnon, sampled every 1 ms, {} samples): {:.1} MiB before, peak {:.0} MiB, \
         so the load added at most {:.0} MiB",
        samples.load(Ordering::Relaxed),
        mib(before),
        mib(peak),
        mib(grew)
    );
    println!(
        "fp32 buffer {:.0} MiB + largest tensor in fp32 {:.0} MiB = {:.0} MiB (bound, plus {} MiB slack)",
        mib(buffer),
        mib(largest),
        mib(buffer + largest),
        SLACK >> 20
    );
    println!(
        "all resident memory, file pages included: VmHWM {:.0} MiB, now VmRSS {:.0} MiB (RssFile {:.0} MiB)",
        mib(status_bytes(&end, "VmHWM:")),
        mib(status_bytes(&end, "VmRSS:")),
        mib(status_bytes(&end, "RssFile:"))
    );
    if grew > buffer + largest + SLACK {
        bail!("the load held more anonymous memory than the fp32 buffer plus one tensor");
    }
    drop(ck);
    Ok(())
}
