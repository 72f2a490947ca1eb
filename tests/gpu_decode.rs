//! KV-cache decoding on the GPU executor: the two decode ops against the CPU executor, then the
//! whole decode path (prefill + token by token, several rows at different positions) against the
//! GPU's own full forward pass and against CPU decoding, with and without ITI head shifts (both
//! shift modes) and with an o_proj bias; generation with a fixed seed twice.
//!
//! Tolerances: the ops are fp32 on both executors (relative error 1e-5, the GPU may contract
//! into FMAs); the model-level logits [`TOL`] = 4e-2 relative (norm-wise per logits vector),
//! since the GPU's linear layers round their operands to bf16 in both its decode and its full
//! forward pass (and its flash attention rounds q, k, v, P to bf16 where decode attention stays
//! fp32). That noise grows with the weights' scale: on this model at the initialisation's scale
//! the worst position measured 1.1e-2 (GPU decode vs CPU decode), 9.7e-3 (GPU decode vs GPU full
//! forward) and 1.2e-2 (GPU vs CPU full forward), against 2.6e-2 at twice and 6.5e-2 at four
//! times that scale (kernels run on the host by cuda/emu/driver, which rounds to bf16 exactly as
//! the GPU does). Every comparison also checks the tolerance is meaningful: decode logits set
//! against the reference one position earlier must differ by more than 3·TOL (measured: 0.25 or
//! more).
//!
//! Without a usable GPU every test is reported as *ignored*; with `BADDATA_GPU_REQUIRED=1` a
//! missing GPU fails the run instead.

use anyhow::{ensure, Context, Result};
use baddata::backend::cpu::Cpu;
use baddata::backend::cuda::executor::CudaExecutor;
use baddata::backend::{Backend, CacheShape, Span, DECODE_META};
use baddata::config::ModelConfig;
use baddata::model::generate::{Chunk, KvCache, SampleOptions, ShiftPositions};
use baddata::model::transformer::rope_table;
use baddata::model::{init_params, Model, ParamLayout};
use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Per row, the (position, logits) of every position a decode produced.
type Decoded = Vec<Vec<(usize, Vec<f32>)>>;
/// A CPU and a GPU model with the same parameters (host copy, device copy).
type Pair = (
    Model<Cpu<f32>>,
    Model<CudaExecutor>,
    Vec<f32>,
    CudaSlice<f32>,
);
/// Applies `(layer, values, is_bias)` settings to both models of a [`Pair`].
type Setup<'a> = dyn Fn(&mut dyn FnMut(usize, &[f32], bool) -> Result<()>) -> Result<()> + 'a;

#[path = "common/gpu.rs"]
mod gpu_common;

use gpu_common::{
    exec, open_ctx, rel_err, run_gpu_tests, uniform, upload_f32, Ctx, GpuTest, GUARD,
};

fn main() {
    let tests: [(&str, GpuTest<Ctx>); 7] = [
        ("decode_ops_match_cpu", decode_ops_match_cpu),
        (
            "decode_meta_out_of_range_is_an_error",
            decode_meta_out_of_range_is_an_error,
        ),
        (
            "decode_matches_full_forward_and_cpu",
            decode_matches_full_forward_and_cpu,
        ),
        (
            "decode_with_head_shifts_both_modes",
            decode_with_head_shifts_both_modes,
        ),
        ("decode_with_o_proj_bias", decode_with_o_proj_bias),
        (
            "decode_untied_clip_qkv_matches_full_forward_and_cpu",
            decode_untied_clip_qkv_matches_full_forward_and_cpu,
        ),
        (
            "generation_is_seeded_and_repeatable",
            generation_is_seeded_and_repeatable,
        ),
    ];
    run_gpu_tests("gpu decode", open_ctx, Vec::new(), &tests)
}

/// Like [`rel_err`], but where the reference is NaN (a cache slot nobody wrote) `a` must be NaN
/// too (its bits kept); returns the error over the finite part.
fn rel_err_nan_aware(a: &[f32], b: &[f32], what: &str) -> Result<f64> {
    ensure!(
        a.len() == b.len(),
        "{what}: {} values, expected {}",
        a.len(),
        b.len()
    );
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, (&p, &q)) in a.iter().zip(b).enumerate() {
        if q.is_nan() {
            ensure!(
                p.is_nan(),
                "{what}: element {i} should be untouched (NaN), is {p}"
            );
        } else {
            x.push(p);
            y.push(q);
        }
    }
    Ok(rel_err(&x, &y))
}

/// One new token of a decode call: cache row, position, shifted flag.
struct Tok {
    row: usize,
    pos: usize,
    shifted: bool,
}

/// The decode ops (`kv_append`, `attention_decode`) on the GPU against the CPU executor: four
/// cache rows at different positions in one call (a 7-token prefill, position 0, position 5 after
/// earlier ones, the last position), head widths of each kernel variant (16, 32, 64, 100, 128,
/// 200), shift on and off with a per-token flag, the shift addressed at an offset inside its
/// buffer. Cache slots no token writes are NaN and must stay NaN (and unread: a read past a
/// row's position would poison z); `z` is NaN-poisoned and followed by guards.
fn decode_ops_match_cpu(ctx: &Ctx) -> Result<()> {
    let gpu = exec(ctx)?;
    let cpu = Cpu::<f32>::new();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let t_max = 19;
    let mut toks: Vec<Tok> = (0..7)
        .map(|p| Tok {
            row: 0,
            pos: p,
            shifted: p >= 5,
        })
        .collect();
    toks.push(Tok {
        row: 1,
        pos: 0,
        shifted: true,
    });
    toks.push(Tok {
        row: 2,
        pos: 5,
        shifted: false,
    });
    toks.push(Tok {
        row: 3,
        pos: t_max - 1,
        shifted: true,
    });
    let before = [0usize, 0, 5, t_max - 1]; // positions cached by earlier calls, per row
    let n = toks.len();
    let meta: Vec<u32> = toks
        .iter()
        .flat_map(|t| [t.row as u32, t.pos as u32, t.shifted as u32])
        .collect();
    for &(h, dh) in &[
        (5usize, 16usize),
        (3, 32),
        (4, 64),
        (2, 100),
        (2, 128),
        (2, 200),
    ] {
        let c = CacheShape {
            rows: 4,
            t_max,
            h,
            dh,
        };
        let d = c.d();
        let what = format!("H={h} dh={dh}");
        let table: Vec<f32> = rope_table(t_max, dh, 10_000.0)
            .into_iter()
            .map(|x| x as f32)
            .collect();
        let qkv0 = uniform(&mut rng, n * 3 * d, -1.5, 1.5);
        let (mut kc0, mut vc0) = (vec![f32::NAN; c.len()], vec![f32::NAN; c.len()]);
        for (r, &b) in before.iter().enumerate() {
            for hh in 0..h {
                for p in 0..b {
                    let at = ((r * h + hh) * t_max + p) * dh;
                    kc0[at..at + dh].copy_from_slice(&uniform(&mut rng, dh, -1.5, 1.5));
                    vc0[at..at + dh].copy_from_slice(&uniform(&mut rng, dh, -2.0, 2.0));
                }
            }
        }
        // CPU reference.
        let (mut qkv_c, mut kc_c, mut vc_c) = (qkv0.clone(), kc0.clone(), vc0.clone());
        cpu.kv_append(&mut qkv_c, &mut kc_c, &mut vc_c, &table, &meta, n, c)?;
        // GPU.
        let up = |x: &[f32]| upload_f32(&gpu, x);
        let (mut qkv_g, mut kc_g, mut vc_g, table_g) =
            (up(&qkv0)?, up(&kc0)?, up(&vc0)?, up(&table)?);
        let mut meta_g = gpu.alloc_ids(n * DECODE_META)?;
        gpu.upload_ids(&meta, &mut meta_g)?;
        gpu.kv_append(&mut qkv_g, &mut kc_g, &mut vc_g, &table_g, &meta_g, n, c)?;
        let e = rel_err(&gpu.download(&qkv_g)?, &qkv_c);
        ensure!(
            e < 1e-5,
            "kv_append {what}: rotated qkv rel err {e:.2e} ≥ 1e-5"
        );
        let kc_h = gpu.download(&kc_g)?;
        let vc_h = gpu.download(&vc_g)?;
        let e = rel_err_nan_aware(&kc_h, &kc_c, &format!("kv_append {what} k cache"))?;
        ensure!(e < 1e-5, "kv_append {what}: k cache rel err {e:.2e} ≥ 1e-5");
        let e = rel_err_nan_aware(&vc_h, &vc_c, &format!("kv_append {what} v cache"))?;
        ensure!(e < 1e-5, "kv_append {what}: v cache rel err {e:.2e} ≥ 1e-5");

        // Attention, from the same (CPU-written) caches and rotated q on both executors, so
        // the comparison isolates attention_decode.
        let (kc_g, vc_g, qkv_g) = (up(&kc_c)?, up(&vc_c)?, up(&qkv_c)?);
        let mut shift_buf = vec![GUARD; 5];
        shift_buf.extend(uniform(&mut rng, d, -3.0, 3.0));
        let shift_g = up(&shift_buf)?;
        let mut outs = Vec::new();
        for with_shift in [false, true] {
            let mut z_c = vec![0.0f32; n * d];
            let sh = with_shift.then(|| Span::new(&shift_buf, 5, d));
            cpu.attention_decode(&mut z_c, &qkv_c, &kc_c, &vc_c, &meta, n, c, sh)?;
            let mut poisoned = vec![f32::NAN; n * d];
            poisoned.extend([GUARD; 16]);
            let mut z_g = up(&poisoned)?;
            let sh = with_shift.then(|| Span::new(&shift_g, 5, d));
            gpu.attention_decode(&mut z_g, &qkv_g, &kc_g, &vc_g, &meta_g, n, c, sh)?;
            let z = gpu.download(&z_g)?;
            ensure!(
                z[n * d..].iter().all(|&g| g == GUARD),
                "attention_decode {what} shift={with_shift}: guard elements after z overwritten"
            );
            let e = rel_err(&z[..n * d], &z_c);
            ensure!(
                e < 1e-5,
                "attention_decode {what} shift={with_shift}: z rel err {e:.2e} ≥ 1e-5 vs CPU"
            );
            // Deterministic: a second launch gives the same bits.
            let mut z_g2 = up(&poisoned)?;
            gpu.attention_decode(&mut z_g2, &qkv_g, &kc_g, &vc_g, &meta_g, n, c, sh)?;
            let z2 = gpu.download(&z_g2)?;
            ensure!(
                z.iter().zip(&z2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "attention_decode {what} shift={with_shift}: two launches differ"
            );
            outs.push(z);
        }
        // The shift lands on the flagged tokens only, and only there.
        for (i, t) in toks.iter().enumerate() {
            let (a, b) = (&outs[0][i * d..(i + 1) * d], &outs[1][i * d..(i + 1) * d]);
            for (k, (&x, &y)) in a.iter().zip(b).enumerate() {
                let want = if t.shifted { x + shift_buf[5 + k] } else { x };
                ensure!(
                    y.to_bits() == want.to_bits(),
                    "attention_decode {what}: token {i} (shifted {}) column {k}: {y} vs {want}",
                    t.shifted
                );
            }
        }
    }
    Ok(())
}

/// A (row, pos) outside the cache is refused before any launch (the kernels index unchecked).
fn decode_meta_out_of_range_is_an_error(ctx: &Ctx) -> Result<()> {
    let gpu = exec(ctx)?;
    let c = CacheShape {
        rows: 2,
        t_max: 8,
        h: 2,
        dh: 16,
    };
    let (mut qkv, mut kc, mut vc) = (
        gpu.alloc(3 * c.d())?,
        gpu.alloc(c.len())?,
        gpu.alloc(c.len())?,
    );
    let table = gpu.alloc(c.t_max * c.dh)?;
    let mut z = gpu.alloc(c.d())?;
    for (bad, field) in [([0u32, 8, 0], "pos"), ([2u32, 0, 0], "row")] {
        let mut meta = gpu.alloc_ids(DECODE_META)?;
        gpu.upload_ids(&bad, &mut meta)?;
        let e = gpu
            .kv_append(&mut qkv, &mut kc, &mut vc, &table, &meta, 1, c)
            .err()
            .with_context(|| format!("kv_append accepted an out-of-range {field}"))?;
        ensure!(
            format!("{e:#}").contains("outside"),
            "kv_append {field}: {e:#}"
        );
        let e = gpu
            .attention_decode(&mut z, &qkv, &kc, &vc, &meta, 1, c, None)
            .err()
            .with_context(|| format!("attention_decode accepted an out-of-range {field}"))?;
        ensure!(
            format!("{e:#}").contains("outside"),
            "attention_decode {field}: {e:#}"
        );
    }
    Ok(())
}

/// The demo's shape: `tiny` with a 2,048-id vocabulary.
fn tiny() -> Result<ModelConfig> {
    Ok(ModelConfig::preset("tiny")?.with_vocab(2048, 0))
}

/// Limit on ‖gpu − ref‖ / ‖ref‖ for a position's logits (see the module comment).
const TOL: f64 = 4e-2;

/// Random parameters at the initialisation's scale (larger weights amplify the bf16 noise; see
/// the module comment).
fn params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    init_params(cfg, &ParamLayout::new(cfg), seed)
}

/// Three rows of different lengths, each prefilled at its own step and then decoded one token
/// per step: row 0 prefills 9 tokens at step 0 and runs to 30, row 1 prefills 1 token at step 0
/// and runs to 17, row 2 prefills 14 tokens at step 3 and runs to 24. Chunks go in reverse row
/// order. `generated_only`: shifts apply from the last prompt token on (`ShiftPositions::
/// Generated`), else everywhere.
struct Schedule {
    seqs: Vec<Vec<u32>>,
    prefill: Vec<usize>,
    start: Vec<usize>,
}

impl Schedule {
    fn new(vocab_real: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let lens = [30usize, 17, 24];
        Schedule {
            seqs: lens
                .iter()
                .map(|&l| {
                    (0..l)
                        .map(|_| rng.random_range(0..vocab_real as u32))
                        .collect()
                })
                .collect(),
            prefill: vec![9, 1, 14],
            start: vec![0, 0, 3],
        }
    }

    /// Decodes the schedule on `model`; returns per row the (position, logits) of every
    /// position whose logits decoding produced.
    fn run<B: Backend<Elem = f32> + 'static>(
        &self,
        model: &Model<B>,
        params: &B::Buf,
        generated_only: bool,
    ) -> Result<Decoded> {
        let rows = self.seqs.len();
        let mut cache = KvCache::<f32>::new(&model.cfg, rows);
        let mut out = vec![Vec::new(); rows];
        for step in 0.. {
            let mut chunks = Vec::new();
            for r in (0..rows).rev() {
                let len = cache.len(r);
                let s = &self.seqs[r];
                if step == self.start[r] {
                    let p = self.prefill[r];
                    chunks.push(Chunk {
                        row: r,
                        tokens: &s[..p],
                        shift_from: if generated_only { p - 1 } else { 0 },
                    });
                } else if step > self.start[r] && len < s.len() {
                    chunks.push(Chunk {
                        row: r,
                        tokens: &s[len..len + 1],
                        shift_from: 0,
                    });
                }
            }
            if chunks.is_empty() {
                break;
            }
            let logits = model
                .decode(params, &mut cache, &chunks)
                .with_context(|| format!("decode step {step}"))?;
            ensure!(
                logits.len() == chunks.len(),
                "step {step}: {} logits rows",
                logits.len()
            );
            for (ch, l) in chunks.iter().zip(logits) {
                out[ch.row].push((cache.len(ch.row) - 1, l));
            }
        }
        for (r, s) in self.seqs.iter().enumerate() {
            ensure!(
                cache.len(r) == s.len(),
                "row {r}: cache holds {} positions",
                cache.len(r)
            );
        }
        Ok(out)
    }
}

/// A CPU and a GPU model of `cfg` with the same parameters, set up by `setup` (shifts, biases).
fn both_models(ctx: &Ctx, cfg: &ModelConfig, host: &[f32], setup: &Setup) -> Result<Pair> {
    let mut cpu = Model::new(cfg.clone(), Cpu::<f32>::new())?;
    let mut gpu = Model::new(cfg.clone(), exec(ctx)?)?;
    setup(&mut |l, v, bias| {
        if bias {
            cpu.set_o_bias(l, Some(v))?;
            gpu.set_o_bias(l, Some(v))
        } else {
            cpu.set_head_shift(l, Some(v))?;
            gpu.set_head_shift(l, Some(v))
        }
    })?;
    let mut gp = gpu.alloc_params()?;
    gpu.backend().upload(host, &mut gp)?;
    Ok((cpu, gpu, host.to_vec(), gp))
}

/// Decodes the schedule on both executors and checks every produced position: GPU decode
/// against the GPU full forward (unless `generated_only`: shifts everywhere or none) and against
/// CPU decode, relative error [`TOL`]; and that the GPU decode logits of every position but a
/// row's first differ from the CPU decode logits one position earlier by more than 3·TOL (so
/// the tolerance would catch a decode that reads the wrong position). Returns the GPU decode
/// logits.
fn check_decode(
    what: &str,
    cpu: &mut Model<Cpu<f32>>,
    gpu: &mut Model<CudaExecutor>,
    cp: &Vec<f32>,
    gp: &CudaSlice<f32>,
    sched: &Schedule,
    generated_only: bool,
) -> Result<Decoded> {
    let v = gpu.cfg.vocab_size;
    let dec_g = sched.run(gpu, gp, generated_only)?;
    let dec_c = sched.run(cpu, cp, generated_only)?;
    let mut worst = (0.0f64, 0.0f64, f64::INFINITY);
    for (r, s) in sched.seqs.iter().enumerate() {
        let full = (!generated_only)
            .then(|| gpu.logits(gp, s, 1, s.len()))
            .transpose()?;
        ensure!(
            dec_g[r].len() == s.len() - sched.prefill[r] + 1,
            "{what}: row {r}: {} decoded positions",
            dec_g[r].len()
        );
        for ((p, lg), (pc, lc)) in dec_g[r].iter().zip(&dec_c[r]) {
            ensure!(p == pc, "{what}: row {r}: positions {p} vs {pc}");
            ensure!(
                lg.len() == v,
                "{what}: row {r} pos {p}: {} logits",
                lg.len()
            );
            let e = rel_err(lg, lc);
            ensure!(
                e < TOL,
                "{what}: row {r} pos {p}: GPU decode vs CPU decode rel err {e:.2e} ≥ {TOL:.0e}"
            );
            worst.0 = worst.0.max(e);
            if let Some(f) = &full {
                let e = rel_err(lg, &f[p * v..(p + 1) * v]);
                ensure!(
                    e < TOL,
                    "{what}: row {r} pos {p}: GPU decode vs GPU full forward rel err {e:.2e} ≥ \
                     {TOL:.0e}"
                );
                worst.1 = worst.1.max(e);
            }
        }
        for ((p, lg), (pc, lc)) in dec_g[r].iter().skip(1).zip(&dec_c[r]) {
            let e = rel_err(lg, lc);
            ensure!(
                e > 3.0 * TOL,
                "{what}: row {r}: GPU decode at position {p} vs CPU decode at {pc} differ by only \
                 {e:.2e}: the tolerance {TOL:.0e} would not catch a position mistake"
            );
            worst.2 = worst.2.min(e);
        }
    }
    eprintln!(
        "{what}: worst rel err GPU decode vs CPU decode {:.2e}, vs GPU full forward {:.2e}; \
         least against the position before {:.2e}",
        worst.0, worst.1, worst.2
    );
    Ok(dec_g)
}

fn decode_matches_full_forward_and_cpu(ctx: &Ctx) -> Result<()> {
    let cfg = tiny()?;
    let host = params(&cfg, 3);
    let (mut cpu, mut gpu, cp, gp) = both_models(ctx, &cfg, &host, &|_| Ok(()))?;
    let sched = Schedule::new(cfg.vocab_real, 4);
    let a = check_decode("no shift", &mut cpu, &mut gpu, &cp, &gp, &sched, false)?;
    // Deterministic: the same schedule again gives the same bits.
    let b = sched.run(&gpu, &gp, false)?;
    for (ra, rb) in a.iter().zip(&b) {
        for ((p, x), (_, y)) in ra.iter().zip(rb) {
            ensure!(
                x.iter().zip(y).all(|(u, w)| u.to_bits() == w.to_bits()),
                "position {p}: two decodes of the same schedule differ"
            );
        }
    }
    Ok(())
}

/// OLMo-1B-0724's features in the decode path: the untied head's logits and the q, k, v clamp
/// (at 1.0, about a third of this random model's values clipped) before RoPE and the cache.
fn decode_untied_clip_qkv_matches_full_forward_and_cpu(ctx: &Ctx) -> Result<()> {
    let cfg = ModelConfig {
        tie_word_embeddings: false,
        clip_qkv: Some(1.0),
        ..tiny()?
    };
    let host = params(&cfg, 5);
    let (mut cpu, mut gpu, cp, gp) = both_models(ctx, &cfg, &host, &|_| Ok(()))?;
    let sched = Schedule::new(cfg.vocab_real, 6);
    check_decode(
        "untied, clip_qkv 1.0",
        &mut cpu,
        &mut gpu,
        &cp,
        &gp,
        &sched,
        false,
    )?;
    Ok(())
}

/// Per-layer head shifts on two of the four layers (a few heads each).
fn shifts(cfg: &ModelConfig, seed: u64) -> Vec<(usize, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dh = cfg.d_head();
    [(1usize, [0usize, 2]), (3, [1, 3])]
        .iter()
        .map(|(l, heads)| {
            let mut s = vec![0.0f32; cfg.d_model];
            for &h in heads {
                for x in &mut s[h * dh..(h + 1) * dh] {
                    *x = rng.random_range(-2.0..2.0);
                }
            }
            (*l, s)
        })
        .collect()
}

fn decode_with_head_shifts_both_modes(ctx: &Ctx) -> Result<()> {
    let cfg = tiny()?;
    let host = params(&cfg, 5);
    let sh = shifts(&cfg, 6);
    let sched = Schedule::new(cfg.vocab_real, 7);
    let (mut cpu0, mut gpu0, cp0, gp0) = both_models(ctx, &cfg, &host, &|_| Ok(()))?;
    let plain = check_decode("plain", &mut cpu0, &mut gpu0, &cp0, &gp0, &sched, false)?;
    let (mut cpu, mut gpu, cp, gp) = both_models(ctx, &cfg, &host, &|set| {
        for (l, s) in &sh {
            set(*l, s, false)?;
        }
        Ok(())
    })?;
    let all = check_decode(
        "shift at all positions",
        &mut cpu,
        &mut gpu,
        &cp,
        &gp,
        &sched,
        false,
    )?;
    let gen = check_decode(
        "shift at generated positions",
        &mut cpu,
        &mut gpu,
        &cp,
        &gp,
        &sched,
        true,
    )?;
    // The shift must move the logits, and the two modes must differ after a multi-token
    // prefill (row 0: 9 prompt tokens, 8 of them unshifted in the generated-only mode).
    let moved = rel_err(&all[0][0].1, &plain[0][0].1);
    ensure!(
        moved > 5e-2,
        "the head shift moves the logits by only {moved:.2e}"
    );
    let modes = rel_err(&gen[0][0].1, &all[0][0].1);
    ensure!(
        modes > 1e-2,
        "shift modes all / generated give the same logits ({modes:.2e})"
    );
    Ok(())
}

fn decode_with_o_proj_bias(ctx: &Ctx) -> Result<()> {
    let cfg = tiny()?;
    let host = params(&cfg, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let bias: Vec<(usize, Vec<f32>)> = [0usize, 2]
        .iter()
        .map(|&l| (l, uniform(&mut rng, cfg.d_model, -1.0, 1.0)))
        .collect();
    let sched = Schedule::new(cfg.vocab_real, 10);
    let (mut cpu, mut gpu, cp, gp) = both_models(ctx, &cfg, &host, &|set| {
        for (l, b) in &bias {
            set(*l, b, true)?;
        }
        Ok(())
    })?;
    let biased = check_decode("o_proj bias", &mut cpu, &mut gpu, &cp, &gp, &sched, false)?;
    let (_, plain_gpu, _, gp0) = both_models(ctx, &cfg, &host, &|_| Ok(()))?;
    let plain = sched.run(&plain_gpu, &gp0, false)?;
    let moved = rel_err(&biased[1][0].1, &plain[1][0].1);
    ensure!(
        moved > 5e-2,
        "the o_proj bias moves the logits by only {moved:.2e}"
    );
    Ok(())
}

/// Sampling with a fixed seed on the GPU gives the same tokens twice (decode is deterministic
/// and sampling runs on the host), with and without shifts; greedy GPU and CPU continuations are
/// reported (not required to agree: near-ties may break differently under bf16 rounding).
fn generation_is_seeded_and_repeatable(ctx: &Ctx) -> Result<()> {
    let cfg = tiny()?;
    let host = params(&cfg, 11);
    let sh = shifts(&cfg, 12);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let prompts: Vec<Vec<u32>> = [5usize, 1, 12]
        .iter()
        .map(|&l| {
            (0..l)
                .map(|_| rng.random_range(0..cfg.vocab_real as u32))
                .collect()
        })
        .collect();
    for (with_shift, mode) in [
        (false, ShiftPositions::All),
        (true, ShiftPositions::All),
        (true, ShiftPositions::Generated),
    ] {
        let (cpu, gpu, cp, gp) = both_models(ctx, &cfg, &host, &|set| {
            if with_shift {
                for (l, s) in &sh {
                    set(*l, s, false)?;
                }
            }
            Ok(())
        })?;
        let opts = SampleOptions {
            max_new_tokens: 20,
            temperature: 0.9,
            top_p: 0.95,
            seed: 7,
            eos: None,
            shift_positions: mode,
        };
        let a = gpu.generate(&gp, &prompts, 0, &opts)?;
        let b = gpu.generate(&gp, &prompts, 0, &opts)?;
        ensure!(
            a == b,
            "shift {with_shift} {mode:?}: two seeded generations differ"
        );
        for (i, g) in a.iter().enumerate() {
            ensure!(
                g.tokens.len() == 20 && g.tokens.iter().all(|&t| (t as usize) < cfg.vocab_real),
                "shift {with_shift} {mode:?}: prompt {i}: {:?}",
                g.tokens
            );
        }
        let greedy = SampleOptions {
            temperature: 0.0,
            ..opts
        };
        let g = gpu.generate(&gp, &prompts, 0, &greedy)?;
        let c = cpu.generate(&cp, &prompts, 0, &greedy)?;
        let same: usize = g
            .iter()
            .zip(&c)
            .map(|(x, y)| {
                x.tokens
                    .iter()
                    .zip(&y.tokens)
                    .take_while(|(u, w)| u == w)
                    .count()
            })
            .sum();
        eprintln!(
            "shift {with_shift} {mode:?}: greedy GPU and CPU agree on the first {same} of {} tokens",
            3 * 20
        );
    }
    Ok(())
}
