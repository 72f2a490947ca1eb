//! Where a training step's time goes: [`Profiled`] wraps any executor, runs every op through it
//! unchanged, and for the steps it is asked to profile records a [`Backend::mark`] after each
//! op. An op's time is the executor time from the previous mark to its own: on the GPU, marks
//! are events on the one stream, so nothing waits and the queue stays full (the time between two
//! events is the op's device time, plus any idle gap before it); on the CPU, ops run as they are
//! called, so a mark is the wall clock.
//!
//! Ops are grouped by label (the op and its shape, e.g. `matmul_fwd 16384×2048→6144`), and the
//! table gives calls per step, milliseconds per step, share of the profiled time and, for the
//! matmuls and attention, TFLOP/s. FLOPs counted: `2·m·k·n` per matmul (the output layer's
//! backward `4·m·d·v`: both products); causal attention `4·B·H·dh·T(T+1)/2` forward (q·kᵀ and
//! p·v over the unmasked half) and 2.5 times that backward (five products, FlashAttention's
//! convention; our kernels recompute q·kᵀ and dz·vᵀ once more for dq).
//!
//! `train --profile N` profiles the last N steps of a run and writes `profile.md` and
//! `profile.json` next to its log. Recording costs one event (GPU) per op and a little host time;
//! unprofiled steps pay nothing. The wrapper also counts what is allocated through it
//! ([`Profiled::allocated`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{AttnShape, Backend, CacheShape, Pointwise, Span, SpanMut};
use crate::backend::StepArgs;

/// An executor that times the ops of chosen training steps (see the module docs).
pub struct Profiled<B: Backend> {
    inner: B,
    steps: Range<u64>,
    out: Option<PathBuf>,
    state: RefCell<State<B::Mark>>,
    /// Elements allocated through this executor: floats, logits, ids.
    allocated: std::cell::Cell<[usize; 3]>,
}

/// What the profiler holds between marks.
struct State<M> {
    /// The step being recorded, and the mark at its start.
    open: Option<(u64, M)>,
    /// Ops of the open step: label, FLOPs, the mark after the op.
    pending: Vec<(String, Option<f64>, M)>,
    /// Per label over the finished profiled steps: calls, seconds, FLOPs.
    totals: BTreeMap<String, (u64, f64, Option<f64>)>,
    /// Profiled steps finished.
    steps_done: Vec<u64>,
    written: bool,
}

/// One row of the profile: an op at one shape.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileRow {
    /// The op and its shape.
    pub op: String,
    /// Calls per profiled step.
    pub calls_per_step: f64,
    /// Milliseconds per step.
    pub ms_per_step: f64,
    /// Share of the profiled time (0..1).
    pub share: f64,
    /// Achieved TFLOP/s, for ops whose FLOPs are counted.
    pub tflops: Option<f64>,
}

/// The whole profile: the steps it covers and one row per op, slowest first.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// The executor it ran on.
    pub executor: String,
    /// The profiled steps.
    pub steps: Vec<u64>,
    /// Milliseconds per step, all ops together.
    pub step_ms: f64,
    /// One row per op and shape, by time per step, largest first.
    pub ops: Vec<ProfileRow>,
}

impl<B: Backend> Profiled<B> {
    /// Wraps `inner`; the steps in `steps` are timed, and when the last of them ends the profile
    /// is printed and, with `out`, written there as `profile.md` and `profile.json`.
    pub fn new(inner: B, steps: Range<u64>, out: Option<PathBuf>) -> Self {
        Profiled {
            inner,
            steps,
            out,
            state: RefCell::new(State {
                open: None,
                pending: Vec::new(),
                totals: BTreeMap::new(),
                steps_done: Vec::new(),
                written: false,
            }),
            allocated: std::cell::Cell::new([0; 3]),
        }
    }

    /// Elements allocated through this executor so far (floats, logits, token ids): what a
    /// model's workspaces hold, for checking the memory estimate against the allocations.
    pub fn allocated(&self) -> [usize; 3] {
        self.allocated.get()
    }

    fn count(&self, kind: usize, len: usize) {
        let mut a = self.allocated.get();
        a[kind] += len;
        self.allocated.set(a);
    }

    /// The wrapped executor.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Runs `f` on the wrapped executor; while a step is recorded, marks its end under the label
    /// `label()` gives (built only then).
    fn op<R>(
        &self,
        label: impl FnOnce() -> (String, Option<f64>),
        f: impl FnOnce(&B) -> Result<R>,
    ) -> Result<R> {
        let r = f(&self.inner)?;
        if self.state.borrow().open.is_some() {
            let m = self.inner.mark()?;
            let (l, flops) = label();
            self.state.borrow_mut().pending.push((l, flops, m));
        }
        Ok(r)
    }

    /// Closes the open step: turns its marks into per-op times (waiting for the last one).
    fn close_step(&self) -> Result<()> {
        let mut st = self.state.borrow_mut();
        let Some((step, start)) = st.open.take() else {
            return Ok(());
        };
        let pending = std::mem::take(&mut st.pending);
        let mut prev = &start;
        for (label, flops, m) in &pending {
            let s = self.inner.seconds_between(prev, m)?;
            let e = st.totals.entry(label.clone()).or_insert((0, 0.0, *flops));
            e.0 += 1;
            e.1 += s;
            prev = m;
        }
        st.steps_done.push(step);
        Ok(())
    }

    /// The profile of the steps finished so far (`None` before the first).
    pub fn profile(&self) -> Option<Profile> {
        let st = self.state.borrow();
        let n = st.steps_done.len();
        if n == 0 {
            return None;
        }
        let total: f64 = st.totals.values().map(|t| t.1).sum();
        let mut ops: Vec<ProfileRow> = st
            .totals
            .iter()
            .map(|(op, &(calls, secs, flops))| ProfileRow {
                op: op.clone(),
                calls_per_step: calls as f64 / n as f64,
                ms_per_step: secs * 1e3 / n as f64,
                share: if total > 0.0 { secs / total } else { 0.0 },
                tflops: flops
                    .filter(|_| secs > 0.0)
                    .map(|f| f * calls as f64 / secs / 1e12),
            })
            .collect();
        ops.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step));
        Some(Profile {
            executor: self.inner.name(),
            steps: st.steps_done.clone(),
            step_ms: total * 1e3 / n as f64,
            ops,
        })
    }

    /// Prints the profile and writes it to `out` (once).
    fn report(&self) -> Result<()> {
        if self.state.borrow().written {
            return Ok(());
        }
        let Some(p) = self.profile() else {
            return Ok(());
        };
        let md = p.markdown();
        eprintln!("{md}");
        if let Some(dir) = &self.out {
            let md_path = dir.join("profile.md");
            std::fs::write(&md_path, &md)
                .with_context(|| format!("writing {}", md_path.display()))?;
            let json_path = dir.join("profile.json");
            let json = serde_json::to_string_pretty(&p).context("serialising the profile")?;
            std::fs::write(&json_path, json)
                .with_context(|| format!("writing {}", json_path.display()))?;
        }
        self.state.borrow_mut().written = true;
        Ok(())
    }
}

impl Profile {
    /// The profile as a markdown table, with a title line.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let steps = match (self.steps.first(), self.steps.last()) {
            (Some(a), Some(b)) if a != b => format!("steps {a}–{b}"),
            (Some(a), _) => format!("step {a}"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "Profile of {steps} on {}: {:.3} ms per step, all ops together\n",
            self.executor, self.step_ms
        );
        let _ = writeln!(s, "| op | calls/step | ms/step | share | TFLOP/s |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for r in &self.ops {
            let tf = r.tflops.map_or("–".to_string(), |t| format!("{t:.1}"));
            let _ = writeln!(
                s,
                "| `{}` | {} | {:.3} | {:.1}% | {tf} |",
                r.op,
                r.calls_per_step,
                r.ms_per_step,
                100.0 * r.share
            );
        }
        s
    }
}

/// `(label, None)`: an op whose FLOPs are not counted.
fn plain(label: String) -> (String, Option<f64>) {
    (label, None)
}

/// The label and FLOPs of `products` GEMMs of `m`×`k`→`n` (2·m·k·n FLOPs each), named `op`.
fn gemm(op: &str, m: usize, k: usize, n: usize, products: f64) -> (String, Option<f64>) {
    (
        format!("{op} {m}×{k}→{n}"),
        Some(products * 2.0 * (m * k * n) as f64),
    )
}

/// FLOPs of causal attention forward over `s` (see the module docs).
fn attention_flops(s: AttnShape) -> f64 {
    let (b, h, t, dh) = (s.b as f64, s.h as f64, s.t as f64, s.dh as f64);
    4.0 * b * h * dh * t * (t + 1.0) / 2.0
}

impl<B: Backend> Backend for Profiled<B> {
    type Elem = B::Elem;
    type Buf = B::Buf;
    type Ids = B::Ids;
    type Logits = B::Logits;
    type Mark = B::Mark;

    fn name(&self) -> String {
        self.inner.name()
    }
    fn alloc(&self, len: usize) -> Result<B::Buf> {
        self.count(0, len);
        self.inner.alloc(len)
    }
    fn buf_len(&self, buf: &B::Buf) -> usize {
        self.inner.buf_len(buf)
    }
    fn zero(&self, buf: &mut B::Buf) -> Result<()> {
        self.op(|| plain("zero".into()), |b| b.zero(buf))
    }
    fn upload(&self, host: &[B::Elem], dst: &mut B::Buf) -> Result<()> {
        self.op(|| plain("upload".into()), |b| b.upload(host, dst))
    }
    fn download(&self, src: &B::Buf) -> Result<Vec<B::Elem>> {
        self.op(|| plain("download".into()), |b| b.download(src))
    }
    fn alloc_ids(&self, len: usize) -> Result<B::Ids> {
        self.count(2, len);
        self.inner.alloc_ids(len)
    }
    fn upload_ids(&self, host: &[u32], dst: &mut B::Ids) -> Result<()> {
        self.op(|| plain("upload_ids".into()), |b| b.upload_ids(host, dst))
    }
    fn alloc_logits(&self, len: usize) -> Result<B::Logits> {
        self.count(1, len);
        self.inner.alloc_logits(len)
    }
    fn memory_in_use(&self) -> Result<Option<usize>> {
        self.inner.memory_in_use()
    }
    fn sum(&self, x: &B::Buf, n: usize) -> Result<f64> {
        self.op(|| plain(format!("sum (read back) {n}")), |b| b.sum(x, n))
    }
    fn mark(&self) -> Result<B::Mark> {
        self.inner.mark()
    }
    fn seconds_between(&self, start: &B::Mark, end: &B::Mark) -> Result<f64> {
        self.inner.seconds_between(start, end)
    }

    /// `Some(step)`: starts recording when `step` is one of the profiled steps. `None` (the step
    /// ended): closes the recorded step, and reports when it was the last of the range (a run
    /// resumed inside the range reports the steps it ran).
    fn on_step(&self, step: Option<u64>) -> Result<()> {
        let closing = self.state.borrow().open.as_ref().map(|o| o.0);
        self.close_step()?;
        match step {
            Some(s) if self.steps.contains(&s) => {
                let m = self.inner.mark()?;
                self.state.borrow_mut().open = Some((s, m));
            }
            Some(_) => {}
            None => {
                if closing.is_some_and(|s| s + 1 >= self.steps.end) {
                    self.report()?;
                }
            }
        }
        Ok(())
    }

    fn embedding_fwd(
        &self,
        out: &mut B::Buf,
        ids: &B::Ids,
        wte: Span<B::Buf>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        self.op(
            || plain(format!("embedding_fwd {n}×{d}")),
            |b| b.embedding_fwd(out, ids, wte, n, d),
        )
    }
    fn embedding_bwd(
        &self,
        dwte: SpanMut<B::Buf>,
        ids: &B::Ids,
        dout: &B::Buf,
        n: usize,
        d: usize,
    ) -> Result<()> {
        self.op(
            || plain(format!("embedding_bwd {n}×{d}")),
            |b| b.embedding_bwd(dwte, ids, dout, n, d),
        )
    }
    fn layernorm_fwd(
        &self,
        out: &mut B::Buf,
        mean: &mut B::Buf,
        rstd: &mut B::Buf,
        x: &B::Buf,
        n: usize,
        d: usize,
        eps: f64,
    ) -> Result<()> {
        self.op(
            || plain(format!("layernorm_fwd {n}×{d}")),
            |b| b.layernorm_fwd(out, mean, rstd, x, n, d, eps),
        )
    }
    fn add_layernorm_fwd(
        &self,
        sum: &mut B::Buf,
        out: &mut B::Buf,
        mean: &mut B::Buf,
        rstd: &mut B::Buf,
        a: &B::Buf,
        x: &B::Buf,
        n: usize,
        d: usize,
        eps: f64,
    ) -> Result<()> {
        self.op(
            || plain(format!("add_layernorm_fwd {n}×{d}")),
            |b| b.add_layernorm_fwd(sum, out, mean, rstd, a, x, n, d, eps),
        )
    }
    fn layernorm_bwd(
        &self,
        dx: &mut B::Buf,
        dy: &B::Buf,
        xhat: &B::Buf,
        rstd: &B::Buf,
        n: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.op(
            || plain(format!("layernorm_bwd {n}×{d}")),
            |b| b.layernorm_bwd(dx, dy, xhat, rstd, n, d, accumulate),
        )
    }
    fn run_pointwise(&self, op: Pointwise<'_, B::Buf>) -> Result<()> {
        // The op moves into the executor, so its label is taken first, and only while a step is
        // recorded (unprofiled steps format nothing).
        let label = self.state.borrow().open.is_some().then(|| op.label());
        self.op(|| plain(label.unwrap_or_default()), |b| b.run_pointwise(op))
    }
    fn matmul_fwd(
        &self,
        y: &mut B::Buf,
        x: &B::Buf,
        w: Span<B::Buf>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        self.op(
            || gemm("matmul_fwd", m, k, n, 1.0),
            |b| b.matmul_fwd(y, x, w, m, k, n),
        )
    }
    fn matmul_bwd_x(
        &self,
        dx: &mut B::Buf,
        dy: &B::Buf,
        w: Span<B::Buf>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        self.op(
            || gemm("matmul_bwd_x", m, k, n, 1.0),
            |b| b.matmul_bwd_x(dx, dy, w, m, k, n),
        )
    }
    fn matmul_bwd_w(
        &self,
        dw: SpanMut<B::Buf>,
        dy: &B::Buf,
        x: &B::Buf,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.op(
            || gemm("matmul_bwd_w", m, k, n, 1.0),
            |b| b.matmul_bwd_w(dw, dy, x, m, k, n, accumulate),
        )
    }
    fn zero_range(&self, x: SpanMut<B::Buf>) -> Result<()> {
        let len = x.len;
        self.op(|| plain(format!("zero_range {len}")), |b| b.zero_range(x))
    }
    fn logits_fwd(
        &self,
        logits: &mut B::Logits,
        x: &B::Buf,
        wte: Span<B::Buf>,
        m: usize,
        d: usize,
        v: usize,
    ) -> Result<()> {
        self.op(
            || gemm("logits_fwd", m, d, v, 1.0),
            |b| b.logits_fwd(logits, x, wte, m, d, v),
        )
    }
    fn logits_bwd(
        &self,
        dx: &mut B::Buf,
        dwte: SpanMut<B::Buf>,
        dlogits: &B::Logits,
        x: &B::Buf,
        wte: Span<B::Buf>,
        m: usize,
        d: usize,
        v: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.op(
            || gemm("logits_bwd", m, d, v, 2.0),
            |b| b.logits_bwd(dx, dwte, dlogits, x, wte, m, d, v, accumulate),
        )
    }
    fn attention_fwd(
        &self,
        z: &mut B::Buf,
        lse: &mut B::Buf,
        qkv: &B::Buf,
        s: AttnShape,
        shift: Option<Span<B::Buf>>,
    ) -> Result<()> {
        self.op(
            || {
                let l = format!("attention_fwd B{} T{} H{} dh{}", s.b, s.t, s.h, s.dh);
                (l, Some(attention_flops(s)))
            },
            |b| b.attention_fwd(z, lse, qkv, s, shift),
        )
    }
    fn attention_bwd(
        &self,
        dqkv: &mut B::Buf,
        dz: &B::Buf,
        z: &B::Buf,
        qkv: &B::Buf,
        lse: &B::Buf,
        s: AttnShape,
    ) -> Result<()> {
        self.op(
            || {
                let l = format!("attention_bwd B{} T{} H{} dh{}", s.b, s.t, s.h, s.dh);
                (l, Some(2.5 * attention_flops(s)))
            },
            |b| b.attention_bwd(dqkv, dz, z, qkv, lse, s),
        )
    }
    fn cross_entropy(
        &self,
        logits: &mut B::Logits,
        losses: &mut B::Buf,
        targets: &B::Ids,
        n: usize,
        v: usize,
        grad_scale: Option<f64>,
    ) -> Result<()> {
        let what = if grad_scale.is_some() { "+grad" } else { "" };
        self.op(
            || plain(format!("cross_entropy{what} {n}×{v}")),
            |b| b.cross_entropy(logits, losses, targets, n, v, grad_scale),
        )
    }
    fn kv_append(
        &self,
        qkv: &mut B::Buf,
        k_cache: &mut B::Buf,
        v_cache: &mut B::Buf,
        table: &B::Buf,
        meta: &B::Ids,
        n: usize,
        c: CacheShape,
    ) -> Result<()> {
        self.op(
            || plain(format!("kv_append {n}")),
            |b| b.kv_append(qkv, k_cache, v_cache, table, meta, n, c),
        )
    }
    fn attention_decode(
        &self,
        z: &mut B::Buf,
        qkv: &B::Buf,
        k_cache: &B::Buf,
        v_cache: &B::Buf,
        meta: &B::Ids,
        n: usize,
        c: CacheShape,
        shift: Option<Span<B::Buf>>,
    ) -> Result<()> {
        self.op(
            || plain(format!("attention_decode {n}")),
            |b| b.attention_decode(z, qkv, k_cache, v_cache, meta, n, c, shift),
        )
    }
    fn norm_sq(&self, g: &B::Buf, n: usize) -> Result<f64> {
        self.op(
            || plain(format!("norm_sq (read back) {n}")),
            |b| b.norm_sq(g, n),
        )
    }
    fn adamw(
        &self,
        p: &mut B::Buf,
        g: &B::Buf,
        m: &mut B::Buf,
        v: &mut B::Buf,
        n: usize,
        args: &StepArgs,
    ) -> Result<()> {
        self.op(
            || plain(format!("adamw {n}")),
            |b| b.adamw(p, g, m, v, n, args),
        )
    }
}
