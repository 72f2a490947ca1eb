//! Training cost model: FLOPs per token, model FLOPs utilisation (MFU), and the device memory a
//! training run allocates ([`cuda_train_memory`]).
//!
//! The count is the *exact causal* one, not PaLM's approximation:
//!
//! ```text
//! train FLOPs / token = 6 · N_matmul  +  6 · L · D · (T + 1)
//!
//! N_matmul = L · (4·D² + 3·D·F) + V·D
//!            q,k,v,o   gate,up,down   logits (the output layer: the tied embedding counted
//!                                     once, or lm_head; the lookup itself is a gather, no FLOPs)
//! ```
//!
//! * Matmuls: a `[tokens, in] · [in, out]` product costs `2·in·out` FLOPs per token forward and
//!   twice that backward (one product for the input gradient, one for the weight gradient):
//!   `6 · N_matmul` in all. OLMo v1's layernorms have no weights, so for a tied model `N_matmul`
//!   is exactly the parameter count ([`crate::model::params::n_params`]); an untied one has `V·D` more
//!   parameters (its embedding) than matmul weights.
//! * Attention: with causal masking, query `i` (0-based) of a sequence of `T` sees `i + 1` keys,
//!   `T·(T+1)/2` scores per head. Each score costs `2·d_head` for `q·k` and `2·d_head` for
//!   `p·v`, so the forward is `2·D·(T+1)` FLOPs per token and layer; the backward (`dP = dO·Vᵀ`,
//!   `dV = Pᵀ·dO`, `dQ = dS·K`, `dK = dSᵀ·Q`) is twice that: `6·L·D·(T+1)` per token.
//!   PaLM's `12·L·H·d_head·T` also counts the masked half; at OLMo-1B with `T = 2048` it would
//!   add 0.40 GFLOP per token (+5.4%), and every MFU here would read that much higher.
//!   Softmax, layernorm, RoPE, SwiGLU's elementwise part, the loss and the optimizer are not
//!   counted (they are memory-bound; MFU is about the matmul work the model needs).
//!
//! `tools/torch_baseline.py` computes the same formula from the same `config.json`, so the two
//! MFUs compare like for like.

use crate::backend::cuda::executor::Linear;
use crate::backend::AttnShape;
use crate::config::ModelConfig;

/// bf16 dense tensor-core peak of an H100 SXM, from NVIDIA's datasheet (TFLOP/s, no sparsity).
pub const PEAK_BF16_TFLOPS_DATASHEET: f64 = 989.0;

/// bf16 matmul rate measured on the project's H100 (cuBLAS through PyTorch, 8192³), TFLOP/s:
/// what a real GEMM reaches, a fairer ceiling than the datasheet.
pub const PEAK_BF16_TFLOPS_MEASURED: f64 = 798.0;

/// Parameters that take part in a matmul: the per-layer projections plus the output layer, as
/// the logits matmul (equal to [`crate::model::params::n_params`] for a tied model; an untied model's
/// embedding, a lookup, is left out). `clip_qkv`'s recomputed q, k, v product in the backward
/// is not counted (it is not work the model needs).
pub fn matmul_params(cfg: &ModelConfig) -> usize {
    let (l, d, f, v) = (cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size);
    l * (4 * d * d + 3 * d * f) + v * d
}

/// Training FLOPs (forward + backward) per token for sequences of `seq` tokens: the exact
/// causal count `6·N_matmul + 6·L·D·(seq + 1)` (see the module docs for its derivation).
pub fn train_flops_per_token(cfg: &ModelConfig, seq: usize) -> f64 {
    let n = matmul_params(cfg) as f64;
    let attn = 6.0 * (cfg.n_layers * cfg.d_model) as f64 * (seq as f64 + 1.0);
    6.0 * n + attn
}

/// Model FLOPs utilisation as a fraction (0.43 = 43%): the useful FLOP rate
/// `tokens_per_s · flops_per_token` over a peak given in TFLOP/s (e.g.
/// [`PEAK_BF16_TFLOPS_DATASHEET`]).
pub fn mfu(tokens_per_s: f64, flops_per_token: f64, peak_tflops: f64) -> f64 {
    tokens_per_s * flops_per_token / (peak_tflops * 1e12)
}

/// Device memory a training run on the CUDA executor allocates, by buffer: `(what, bytes)`.
/// Everything is allocated by the end of the first step (the workspace before it; the gradient
/// scratch, the attention Δ and the norm scratch during it) and nothing after it (see
/// docs/gpu-results.md, "Device memory of a training step"): the flat parameter, gradient and
/// AdamW moment buffers (fp32), each training tensor of the workspace of `batch` rows of `seq`
/// tokens ([`crate::model::workspace::table`]), and what the executor allocates for itself
/// ([`crate::backend::cuda::executor::step_scratch`]). The CUDA context (about 0.5 GiB) is not
/// counted: it is already taken when free memory is read.
pub fn cuda_train_memory(cfg: &ModelConfig, batch: usize, seq: usize) -> Vec<(String, u64)> {
    let p = crate::model::params::n_params(cfg);
    let mut rows = vec![(
        "parameters, gradients, AdamW m and v (fp32)".to_string(),
        16 * p as u64,
    )];
    for slot in crate::model::workspace::table(cfg, batch, seq) {
        if slot.lifetime.in_training() {
            rows.push((
                format!("{} {} × {}: {}", slot.name, slot.dims, slot.per, slot.what),
                slot.cuda_bytes(),
            ));
        }
    }
    let s = AttnShape {
        b: batch,
        t: seq,
        h: cfg.n_heads,
        dh: cfg.d_head(),
    };
    rows.extend(crate::backend::cuda::executor::step_scratch(
        &linear_layers(cfg),
        s,
        p,
    ));
    rows
}

/// The model's linear layers as the matmuls see them (one block's four, then the output
/// layer), from the parameter layout's matrices.
fn linear_layers(cfg: &ModelConfig) -> Vec<Linear> {
    let lay = crate::model::params::ParamLayout::new(cfg);
    let linear = |m: crate::model::params::Matrix, logits| Linear {
        k: m.cols,
        n: m.rows,
        logits,
    };
    let mut out: Vec<Linear> = lay
        .layers
        .first()
        .map(|w| vec![w.qkv, w.o, w.gate_up, w.down])
        .unwrap_or_default()
        .into_iter()
        .map(|m| linear(m, false))
        .collect();
    out.push(linear(lay.head, true));
    out
}

/// Elements of the matmul operand scratch a training step over `rows` token rows leaves
/// allocated on the CUDA executor ([`crate::backend::cuda::executor::matmul_scratch_elements`]
/// over the model's linear layers).
pub fn matmul_scratch_elements(cfg: &ModelConfig, rows: usize) -> usize {
    crate::backend::cuda::executor::matmul_scratch_elements(&linear_layers(cfg), rows)
}

/// The memory table of docs/gpu-results.md: one row per buffer of [`cuda_train_memory`] (each
/// workspace tensor with its shape, copies, dtype and when it is allocated), one column per
/// `(label, model, batch, seq)`, and the totals.
pub fn memory_table_markdown(columns: &[(&str, &ModelConfig, usize, usize)]) -> String {
    fn size(b: u64) -> String {
        let gib = b as f64 / (1u64 << 30) as f64;
        if gib >= 1.0 {
            format!("{gib:.2} GiB")
        } else if b >= 1 << 20 {
            format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
        } else {
            format!("{:.1} KiB", b as f64 / 1024.0)
        }
    }
    let mut out = String::from("| buffer | shape × copies | dtype | allocated |");
    for (label, ..) in columns {
        out.push_str(&format!(" {label} |"));
    }
    out.push_str("\n|---|---|---|---|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    let per_col: Vec<Vec<(String, u64)>> = columns
        .iter()
        .map(|&(_, cfg, b, t)| cuda_train_memory(cfg, b, t))
        .collect();
    let slots: Vec<_> = columns
        .first()
        .map(|&(_, cfg, b, t)| crate::model::workspace::table(cfg, b, t))
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.lifetime.in_training())
        .collect();
    let n_rows = per_col.first().map_or(0, Vec::len);
    for i in 0..n_rows {
        // Row 0 is the parameters, rows 1..=slots.len() the workspace, the rest the executor's.
        let (what, shape, dtype, when) = if i == 0 {
            (
                "params, grads, AdamW m and v".to_string(),
                "[P] × 4".to_string(),
                "fp32",
                "before the run",
            )
        } else if let Some(s) = slots.get(i - 1) {
            (
                format!("`{}`: {}", s.name, s.what),
                format!("{} × {}", s.dims, s.per),
                s.dtype.cuda_name(),
                s.lifetime.name(),
            )
        } else {
            (per_col[0][i].0.clone(), "".to_string(), "", "first step")
        };
        out.push_str(&format!("| {what} | {shape} | {dtype} | {when} |"));
        for col in &per_col {
            out.push_str(&format!(
                " {} |",
                col.get(i).map_or(String::new(), |r| size(r.1))
            ));
        }
        out.push('\n');
    }
    out.push_str("| **total** | | | |");
    for col in &per_col {
        let total: u64 = col.iter().map(|r| r.1).sum();
        out.push_str(&format!(
            " **{:.1} GiB** |",
            total as f64 / (1u64 << 30) as f64
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The totals of docs/gpu-results.md's memory table, worked out buffer by buffer there:
    /// 62.2 GiB for olmo-1b at 8 × 2048 and 47.6 GiB for olmo-124m at 64 × 1024.
    #[test]
    fn cuda_train_memory_matches_the_documented_table() {
        let gib = |cfg: &ModelConfig, b, t| -> f64 {
            cuda_train_memory(cfg, b, t)
                .iter()
                .map(|r| r.1)
                .sum::<u64>() as f64
                / (1u64 << 30) as f64
        };
        let one_b = ModelConfig::preset("olmo-1b").unwrap();
        let small = ModelConfig::preset("olmo-124m").unwrap();
        assert!(
            (gib(&one_b, 8, 2048) - 62.2).abs() < 0.05,
            "{}",
            gib(&one_b, 8, 2048)
        );
        assert!(
            (gib(&small, 64, 1024) - 47.6).abs() < 0.05,
            "{}",
            gib(&small, 64, 1024)
        );
    }

    /// The memory table of docs/gpu-results.md is [`memory_table_markdown`]'s output, between
    /// its two markers: generated, not kept by hand. `BADDATA_BLESS=1` rewrites the file.
    #[test]
    fn the_documented_memory_table_is_generated() {
        const BEGIN: &str = "<!-- memory table: generated by perf::memory_table_markdown; \
                             BADDATA_BLESS=1 cargo test --release --lib memory_table rewrites it -->\n";
        const END: &str = "<!-- end of the generated memory table -->";
        let one_b = ModelConfig::preset("olmo-1b").unwrap();
        let small = ModelConfig::preset("olmo-124m").unwrap();
        let table = memory_table_markdown(&[
            ("olmo-1b, 8 × 2048 (N = 16,384)", &one_b, 8, 2048),
            ("olmo-124m, 64 × 1024 (N = 65,536)", &small, 64, 1024),
        ]);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/gpu-results.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (a, b) = match (doc.find(BEGIN), doc.find(END)) {
            (Some(a), Some(b)) if a < b => (a + BEGIN.len(), b),
            _ => panic!("{}: the memory table's markers are missing", path.display()),
        };
        if std::env::var_os("BADDATA_BLESS").is_some() {
            std::fs::write(&path, format!("{}{table}{}", &doc[..a], &doc[b..])).unwrap();
        } else {
            assert_eq!(
                &doc[a..b],
                table,
                "{} is out of date: rerun with BADDATA_BLESS=1",
                path.display()
            );
        }
    }

    /// OLMo-1B counted by hand: V = 50,304 (50,280 padded), D = 2,048, F = 8,192, L = 16.
    ///   embedding / head   50,304 · 2,048                       =   103,022,592
    ///   per layer          4 · 2,048² + 3 · 2,048 · 8,192       =    67,108,864
    ///                      (16,777,216 + 50,331,648)
    ///   16 layers                                               = 1,073,741,824
    ///   N                                                       = 1,176,764,416
    /// (the figure the GPU benches print for OLMo-1B's parameter count).
    const OLMO_1B_PARAMS: usize = 1_176_764_416;

    #[test]
    fn olmo_1b_parameter_count_by_hand() {
        let cfg = ModelConfig::preset("olmo-1b").unwrap();
        assert_eq!(matmul_params(&cfg), OLMO_1B_PARAMS);
        assert_eq!(crate::model::params::n_params(&cfg), OLMO_1B_PARAMS);
    }

    #[test]
    fn olmo_1b_train_flops_per_token_by_hand() {
        let cfg = ModelConfig::preset("olmo-1b").unwrap();
        // 6 · 1,176,764,416 = 7,060,586,496
        // attention, T = 2048: 6 · 16 · 2,048 · 2,049 = 402,849,792
        assert_eq!(train_flops_per_token(&cfg, 2048), 7_463_436_288.0);
        // T = 1: one key per query, 6 · 16 · 2,048 · 2 = 393,216
        assert_eq!(train_flops_per_token(&cfg, 1), 7_060_979_712.0);
    }

    #[test]
    fn olmo_124m_train_flops_per_token_by_hand() {
        let cfg = ModelConfig::preset("olmo-124m").unwrap();
        // head 50,304 · 768 = 38,633,472; per layer 4 · 768² + 3 · 768 · 2,048
        // = 2,359,296 + 4,718,592 = 7,077,888; 12 layers = 84,934,656; N = 123,568,128
        assert_eq!(matmul_params(&cfg), 123_568_128);
        // 6N = 741,408,768; attention 6 · 12 · 768 · 1,025 = 56,678,400
        assert_eq!(train_flops_per_token(&cfg, 1024), 798_087_168.0);
    }

    #[test]
    fn mfu_of_the_pytorch_baseline() {
        let cfg = ModelConfig::preset("olmo-1b").unwrap();
        let f = train_flops_per_token(&cfg, 2048);
        // 57,600 tokens/s · 7,463,436,288 FLOP = 429.894 TFLOP/s
        // → 429.894 / 989 = 0.434675..., 429.894 / 798 = 0.538714...
        let a = mfu(57_600.0, f, PEAK_BF16_TFLOPS_DATASHEET);
        let b = mfu(57_600.0, f, PEAK_BF16_TFLOPS_MEASURED);
        assert!(approx::abs_diff_eq!(a, 0.434_675, epsilon = 1e-6), "{a}");
        assert!(approx::abs_diff_eq!(b, 0.538_714, epsilon = 1e-6), "{b}");
        // exactly the peak → 1
        approx::assert_abs_diff_eq!(mfu(1e12 / f, f, 1.0), 1.0, epsilon = 1e-12);
    }
}

/// Training FLOP rate the CUDA executor reached at olmo-1b on an H200 (docs/gpu-results.md:
/// 14,238 tokens/s × 7.45 GFLOP per token ≈ 106 TFLOP/s): the basis of a GPU run's time
/// estimate before it starts.
pub const CUDA_TRAIN_TFLOPS_MEASURED: f64 = 106.0;

/// Share of the CPU's matmul rate ([`cpu_matmul_gflops`]) that a whole CPU training step reaches
/// (attention, layernorm, the loss and AdamW run below the matmul rate). Measured on a 2-core AMD
/// EPYC (busy with other work at the time, which slows the calibration and the steps alike):
/// 0.94 for the tiny demo (1,160 tokens/s × 29.9 MFLOP against a 37 GFLOP/s calibration) and 0.87
/// for olmo-124m at 2 × 256 tokens (45 tokens/s × 756 MFLOP against 39 GFLOP/s).
pub const CPU_STEP_EFFICIENCY: f64 = 0.9;

/// The CPU's f32 matmul rate in GFLOP/s at the shape of `cfg`'s MLP input product
/// (`[rows, d_model] · [d_model, d_ff]`, rows ≤ 512), timed over at least 50 ms: a calibration
/// for [`estimate_train`].
pub fn cpu_matmul_gflops(cfg: &ModelConfig, rows: usize) -> f64 {
    let (m, k, n) = (rows.clamp(1, 512), cfg.d_model, cfg.d_ff);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut y = vec![0f32; m * n];
    crate::backend::cpu::matmul::forward(&mut y, &x, &w, m, k, n); // warm-up
    let t = std::time::Instant::now();
    let mut reps = 0u32;
    while reps < 2 || t.elapsed().as_secs_f64() < 0.05 {
        crate::backend::cpu::matmul::forward(&mut y, &x, &w, m, k, n);
        reps += 1;
    }
    2.0 * (m * k * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// What a training run will cost, said before it starts.
#[derive(Clone, Debug)]
pub struct RunEstimate {
    /// Tokens the run trains on (`steps · batch · seq · grad_accum`).
    pub tokens: f64,
    /// Training FLOPs ([`train_flops_per_token`] × tokens).
    pub flops: f64,
    /// Estimated wall time, seconds.
    pub seconds: f64,
    /// How the estimate was made, for the message.
    pub basis: String,
}

/// Estimates a run of `steps` optimizer steps of `tokens_per_step` tokens at sequence length
/// `seq`: on the GPU at [`CUDA_TRAIN_TFLOPS_MEASURED`], on the CPU at
/// [`CPU_STEP_EFFICIENCY`] × the matmul rate measured now ([`cpu_matmul_gflops`]).
pub fn estimate_train(
    cfg: &ModelConfig,
    seq: usize,
    steps: u64,
    tokens_per_step: usize,
    on_gpu: bool,
) -> RunEstimate {
    let tokens = steps as f64 * tokens_per_step as f64;
    let flops = tokens * train_flops_per_token(cfg, seq);
    let (rate, basis) = if on_gpu {
        (
            CUDA_TRAIN_TFLOPS_MEASURED * 1e12,
            format!(
                "at the {CUDA_TRAIN_TFLOPS_MEASURED:.0} TFLOP/s this executor reached on an H200"
            ),
        )
    } else {
        let g = cpu_matmul_gflops(cfg, tokens_per_step);
        (
            g * 1e9 * CPU_STEP_EFFICIENCY,
            format!(
                "at {:.0} GFLOP/s ({CPU_STEP_EFFICIENCY} of this CPU's matmul rate, {g:.0} GFLOP/s, \
                 measured just now)",
                g * CPU_STEP_EFFICIENCY
            ),
        )
    };
    RunEstimate {
        tokens,
        flops,
        seconds: flops / rate,
        basis,
    }
}

/// A duration for people: `42 s`, `7.5 min`, `3.2 h`, `4.1 days`, `2.7 years`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 90.0 * 60.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 48.0 * 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s < 365.0 * 86400.0 {
        format!("{:.1} days", s / 86400.0)
    } else {
        format!("{:.1} years", s / (365.25 * 86400.0))
    }
}
