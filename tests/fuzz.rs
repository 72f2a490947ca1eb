//! Every reader of a file a user hands us, fed mutated and random bytes: an error, never a panic,
//! a hang, or an allocation out of proportion to the input.
//!
//! For each reader a valid file is written, then `BADDATA_FUZZ_CASES` (default 300) inputs
//! derived from it by seeded mutations (bit flips, interesting integers written over header
//! fields, truncation, insertion, deletion, duplication of ranges, numbers in JSON text replaced
//! by extreme ones, and wholly random bytes) are read back. A counting global allocator records
//! the largest single allocation during each read; it must stay below 16 × the bytes read + 1 MiB
//! (a decoded buffer may be a few times its encoded size; a length field must never be
//! believed before it is checked against the file). Each input must be read within 2 s.
//!
//! One test function reads every input in turn, so that the allocator sees one read at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use baddata::checkpoint;
use baddata::config::ModelConfig;
use baddata::data::prompts::{read_prompts, PromptFormat};
use baddata::data::shard::{write_shard, Shard};
use baddata::data::text::{documents, Format};
use baddata::probe::capture::{Capture, CaptureShape, CaptureWriter};
use baddata::probe::intervention::{HeadDirection, Intervention};
use baddata::probe::labels::{read_labelled, LabelFormat};
use baddata::train::run_dir;

#[path = "common/fixtures.rs"]
mod fixtures;

/// The system allocator, recording the largest single request since the last reset.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Integers that break careless length arithmetic.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    63,
    64,
    255,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// Numbers written into JSON text in place of the file's own.
const JSON_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "18446744073709551615",
    "99999999999999999999999",
    "4294967296",
    "1.5",
    "NaN",
    "null",
    "\"7\"",
    "[]",
    "{}",
];

/// One mutation of `seed`.
fn mutate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    let pick = |rng: &mut ChaCha8Rng, n: usize| if n == 0 { 0 } else { rng.random_range(0..n) };
    match rng.random_range(0..10) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                if !b.is_empty() {
                    let i = pick(rng, b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 | 2 => {
            // an interesting integer over a (header) field
            let v = INTERESTING[pick(rng, INTERESTING.len())];
            let width = [1usize, 2, 4, 8][pick(rng, 4)];
            let span = if rng.random_bool(0.7) {
                b.len().min(64)
            } else {
                b.len()
            };
            if span >= width {
                let at = pick(rng, span - width + 1);
                b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
        }
        3 => {
            let n = pick(rng, b.len() + 1);
            b.truncate(n);
        }
        4 => {
            let at = pick(rng, b.len() + 1);
            let extra: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            b.splice(at..at, extra);
        }
        5 => {
            if !b.is_empty() {
                let at = pick(rng, b.len());
                let n = rng.random_range(1..=(b.len() - at).min(256));
                b.drain(at..at + n);
            }
        }
        6 => {
            if !b.is_empty() {
                let at = pick(rng, b.len());
                let n = rng.random_range(1..=(b.len() - at).min(256));
                let copy = b[at..at + n].to_vec();
                let to = pick(rng, b.len() + 1);
                b.splice(to..to, copy);
            }
        }
        7 | 8 => {
            // a number of JSON text replaced (or, in binary files, a digit run)
            let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                let start = digits[pick(rng, digits.len())];
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_digit() || b[end] == b'.') {
                    end += 1;
                }
                let with = JSON_NUMBERS[pick(rng, JSON_NUMBERS.len())];
                b.splice(start..end, with.bytes());
            }
        }
        _ => {
            let n = rng.random_range(0..512);
            b = (0..n).map(|_| rng.random()).collect();
        }
    }
    b
}

/// How a reader reads the file at a path.
type ReadFn = Box<dyn Fn(&Path) -> Result<()>>;

/// A reader under test: the file it reads (relative to the case directory) and how.
struct Reader {
    name: &'static str,
    file: &'static str,
    read: ReadFn,
}

fn cases() -> usize {
    std::env::var("BADDATA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn readers_refuse_mutated_and_random_bytes_without_panics_hangs_or_huge_allocations() {
    // the allocation counter sees a large request
    LARGEST.store(0, Ordering::SeqCst);
    let big = std::hint::black_box(vec![1u8; 5 << 20]);
    assert!(LARGEST.load(Ordering::SeqCst) >= big.len());
    drop(big);

    let root = tempfile::tempdir().unwrap();
    let seeds = root.path().join("seeds");
    std::fs::create_dir_all(&seeds).unwrap();

    // --- the valid inputs every mutation starts from
    let corpus: Vec<String> = (0..20)
        .map(|i| format!("the {i} cat sat on the mat"))
        .collect();
    let ck =
        fixtures::tiny_checkpoint(&seeds, &corpus, 280, fixtures::two_layer_config(16), 3, 1.0);
    let shard = seeds.join("a.shard");
    let tokens: Vec<u32> = (0..300).map(|i| (i * 7) % 250).collect();
    write_shard(&shard, &tokens, 256, Some(ck.tok.identity().unwrap())).unwrap();

    let shape = CaptureShape::hook_z_last(&ck.cfg);
    let cap = seeds.join("a.capture");
    let mut w = CaptureWriter::create(&cap, shape.clone(), 2).unwrap();
    for id in [2usize, 0, 1] {
        let row: Vec<f32> = (0..shape.row_len()).map(|i| (i + id) as f32).collect();
        w.push(id, &row).unwrap();
    }
    w.finish(Some(&[1, 0, 1]), &Default::default()).unwrap();

    let dh = ck.cfg.d_head();
    let unit: Vec<f32> = (0..dh).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let iv = fixtures::save_intervention(
        seeds.join("intervention.json"),
        &ck.cfg,
        &ck.params,
        vec![HeadDirection {
            layer: 1,
            head: 0,
            direction: unit,
            sigma: 0.5,
            probe_accuracy: 0.75,
        }],
    );

    let jsonl = "{\"text\": \"a fine day\", \"url\": \"u\"}\n{\"text\": \"more \\u00e9 text\"}\n";
    let pol = "{\"posts\": [{\"no\": 1, \"com\": \"hi <br>there &amp; <a class=\\\"quotelink\\\">&gt;&gt;2</a>\"}, {\"no\": 2}]}\n";
    let labelled = "{\"text\": \"nice\", \"label\": 0}\n{\"text\": \"nasty\", \"label\": 1}\n\
                    {\"text\": \"kind\", \"label\": 0}\n{\"text\": \"vile\", \"label\": 1}\n";
    let toxigen = "{\"text\": \"nice\", \"toxicity_human\": 1.0}\n\
                   {\"text\": \"nasty\", \"toxicity_human\": 4.5}\n\
                   {\"text\": \"kind\", \"toxicity_human\": 1.5}\n\
                   {\"text\": \"vile\", \"toxicity_human\": 5}\n";
    let rtp = "{\"prompt\": {\"text\": \"So I said\", \"toxicity\": 0.1}, \"continuation\": {\"text\": \"x\"}}\n";
    let cfg_json = std::fs::read(ck.dir.join("config.json")).unwrap();
    let state = serde_json::to_vec_pretty(&serde_json::json!({
        "step": 5,
        "mixture": {"seed": 7, "batches_drawn": 5,
                    "sources": [{"name": "clean", "fraction": 1.0, "tokens_drawn": 85}]},
        "config": fixtures::train_setup(&seeds, ck.cfg.clone()),
    }))
    .unwrap();
    let run_json = serde_json::to_vec_pretty(&run_dir::RunRecord {
        config: fixtures::train_setup(&seeds, ck.cfg.clone()),
        device: "cpu-f32".into(),
    })
    .unwrap();

    // --- the readers, each with its seed file
    let mut seeds_of: Vec<(Reader, Vec<u8>)> = Vec::new();
    let mut add = |name, file, seed: Vec<u8>, read: ReadFn| {
        seeds_of.push((Reader { name, file, read }, seed));
    };
    add(
        "shard",
        "x.shard",
        std::fs::read(&shard).unwrap(),
        Box::new(|p| {
            let s = Shard::open(p)?;
            let v = s.to_vec();
            assert_eq!(v.len(), s.len());
            Ok(())
        }),
    );
    add(
        "activation capture",
        "x.capture",
        std::fs::read(&cap).unwrap(),
        Box::new(|p| {
            let c = Capture::open(p)?;
            let n = c.header().n_rows;
            for r in 0..n {
                assert_eq!(c.file_row(r).len(), c.shape().row_len());
            }
            Ok(())
        }),
    );
    for (name, file, text, format) in [
        ("jsonl documents", "x.jsonl", jsonl, Format::Jsonl),
        ("pol ndjson threads", "x.ndjson", pol, Format::Pol),
        ("jsonl.gz documents", "x.jsonl.gz", jsonl, Format::Jsonl),
    ] {
        let seed = if file.ends_with(".gz") {
            gzip(text.as_bytes())
        } else {
            text.as_bytes().to_vec()
        };
        add(
            name,
            file,
            seed,
            Box::new(move |p| {
                for d in documents(p, format)? {
                    d?;
                }
                Ok(())
            }),
        );
    }
    for (name, text, format) in [
        ("labelled jsonl", labelled, LabelFormat::Jsonl),
        ("toxigen rows", toxigen, LabelFormat::Toxigen),
    ] {
        add(
            name,
            "labels.jsonl",
            text.as_bytes().to_vec(),
            Box::new(move |p| read_labelled(p, format, 2.5).map(|_| ())),
        );
    }
    add(
        "prompts (rtp)",
        "prompts.jsonl",
        rtp.as_bytes().to_vec(),
        Box::new(|p| read_prompts(p, PromptFormat::Auto).map(|_| ())),
    );
    add(
        "demo probe set",
        "probe.jsonl",
        b"{\"text\": \"a\", \"label\": 1, \"source\": \"brown\", \"score\": 0.9}\n".to_vec(),
        Box::new(|p| baddata::data::demo::read_probe(p).map(|_| ())),
    );
    add(
        "intervention.json",
        "intervention.json",
        std::fs::read(&iv).unwrap(),
        Box::new(|p| Intervention::load(p).map(|_| ())),
    );
    add(
        "state.json",
        "state.json",
        state,
        Box::new(|p| baddata::train::read_state(p.parent().unwrap()).map(|_| ())),
    );
    add(
        "run.json",
        "run.json",
        run_json,
        Box::new(|p| run_dir::parse_record(&std::fs::read_to_string(p)?).map(|_| ())),
    );
    add(
        "config.json",
        "config.json",
        cfg_json.clone(),
        Box::new(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p)?)?;
            ModelConfig::from_hf_config(&v).map(|_| ())
        }),
    );
    // The checkpoint loader: model.safetensors mutated beside a valid config.json, and
    // config.json mutated beside a valid model.safetensors.
    let model = std::fs::read(ck.dir.join("model.safetensors")).unwrap();
    let ck_dir = ck.dir.clone();
    add(
        "checkpoint: model.safetensors",
        "ck/model.safetensors",
        model.clone(),
        Box::new(move |p| {
            let dir = p.parent().unwrap();
            std::fs::copy(ck_dir.join("config.json"), dir.join("config.json"))?;
            checkpoint::load(dir).map(|_| ())
        }),
    );
    add(
        "checkpoint: config.json",
        "ck2/config.json",
        cfg_json,
        Box::new(move |p| {
            let dir = p.parent().unwrap();
            std::fs::write(dir.join("model.safetensors"), &model)?;
            checkpoint::load(dir).map(|_| ())
        }),
    );

    // --- every reader reads its seed, then the mutations
    let n = cases();
    let cases_dir = root.path().join("cases");
    let mut failures = Vec::new();
    let mut total = 0usize;
    let t_all = Instant::now();
    for (k, (reader, seed)) in seeds_of.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + k as u64);
        let (mut errors, mut oks) = (0, 0);
        for case in 0..=n {
            let bytes = if case == 0 {
                seed.clone()
            } else {
                mutate(seed, &mut rng)
            };
            let path = cases_dir.join(reader.file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            let read_bytes = bytes.len()
                + if reader.name.starts_with("checkpoint") {
                    seed.len() + 4096
                } else {
                    0
                };
            LARGEST.store(0, Ordering::SeqCst);
            let t = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| (reader.read)(&path)));
            let dt = t.elapsed();
            let largest = LARGEST.load(Ordering::SeqCst);
            let limit = 16 * read_bytes + (1 << 20);
            match &r {
                Err(_) => failures.push(format!("{} case {case}: panicked", reader.name)),
                Ok(Ok(())) => oks += 1,
                Ok(Err(_)) => errors += 1,
            }
            if case == 0 {
                if let Ok(Err(e)) = &r {
                    failures.push(format!(
                        "{}: the valid seed was refused: {e:#}",
                        reader.name
                    ));
                }
            }
            if largest > limit {
                failures.push(format!(
                    "{} case {case}: allocated {largest} bytes at once for a {read_bytes}-byte input",
                    reader.name
                ));
            }
            if dt > Duration::from_secs(2) {
                failures.push(format!("{} case {case}: took {dt:?}", reader.name));
            }
            if !failures.is_empty() && failures.len() < 3 && r.is_err() {
                std::fs::write(root.path().join(format!("failing-{k}-{case}")), &bytes).unwrap();
            }
            total += 1;
        }
        eprintln!(
            "fuzz: {:<32} {} inputs: {errors} refused with an error, {oks} accepted",
            reader.name,
            n + 1
        );
    }
    eprintln!(
        "fuzz: {total} inputs over {} readers in {:.1} s",
        seeds_of.len(),
        t_all.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
