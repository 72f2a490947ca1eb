//! The CUDA executor: [`Backend`] over device buffers, so the one model definition
//! ([`crate::model::Model`]) runs its forward and backward pass on the GPU through the kernels of
//! `cuda/*.cu`.
//!
//! Memory: every float buffer is an fp32 `CudaSlice<f32>` (parameters, gradients, Adam moments,
//! the residual stream and the saved activations), except the loss's logits, which are bf16
//! (`CudaSlice<bf16>`: the output-layer matmul rounds them as it writes them, the fused
//! cross-entropy reads them in fp32 and writes their gradient back in bf16); matmul and attention
//! round their operands to bf16 as they stage them into shared memory and accumulate in fp32 on
//! the tensor cores (see `cuda/matmul.cu`, `cuda/attention.cu`). Token ids live on the device with a host copy, from
//! which the embedding backward's bucket plan is built (deterministic: no atomics).
//!
//! Synchronisation: every op is queued on the backend's one stream and returns at once. Only
//! [`Backend::sum`] (the loss), [`Backend::norm_sq`] (the gradient norm) and
//! [`Backend::download`] wait for the device. Both reductions are deterministic: `sum` copies
//! the `n` values to the host and adds them in index order in f64 (as the CPU executor does);
//! `norm_sq` reduces fixed 16,384-element chunks on the device in f64 and adds the chunk sums on
//! the host in order.

use std::cell::RefCell;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaView, CudaViewMut};
use half::bf16;

use super::adamw::{grad_norm_partials_len, AdamWKernels, Clip};
use super::attention::AttentionKernels;
use super::cross_entropy::CrossEntropyKernels;
use super::decode::DecodeKernels;
use super::embedding::{DeviceEmbeddingPlan, EmbeddingBwdPlan, EmbeddingKernels};
use super::layernorm::LayerNormKernels;
use super::matmul::{async_scratch_elements, MatmulKernels, MmVersion, DEFAULT_VERSION};
use super::pointwise::PointwiseKernels;
use super::CudaDevice;
use crate::backend::StepArgs;
use crate::backend::{
    AttnShape, Backend, CacheShape, Pointwise, Span, SpanMut, Tensor, TensorMut, DECODE_META,
};

/// One linear layer of a model, as the step's matmuls see it: `k` inputs, `n` outputs;
/// `logits`: the output layer, whose backward reads the bf16 gradient of the logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// Whether this is the output layer.
    pub logits: bool,
}

/// Elements of bf16 operand scratch the matmul keeps after a step over `rows` token rows whose
/// linear layers are `layers`: the largest product's operand copies
/// ([`async_scratch_elements`]; the logits' gradient is read as it is when `n` is a multiple of
/// 8), or 0 when the executor launches the staged version, which copies nothing.
pub fn matmul_scratch_elements(layers: &[Linear], rows: usize) -> usize {
    if DEFAULT_VERSION == MmVersion::Staged {
        return 0;
    }
    layers
        .iter()
        .map(|l| async_scratch_elements(rows, l.k, l.n, l.logits && l.n % 8 == 0))
        .max()
        .unwrap_or(0)
}

/// Device memory the executor allocates for itself during a training step, beside the buffers
/// its caller allocates through [`Backend`]: `(what, bytes)`. `layers` as for
/// [`matmul_scratch_elements`], `s` the step's attention shape, `n_params` the length of the
/// flat parameter (and gradient) buffer.
pub fn step_scratch(layers: &[Linear], s: AttnShape, n_params: usize) -> Vec<(String, u64)> {
    let mut rows = Vec::new();
    let mm = matmul_scratch_elements(layers, s.n());
    if mm > 0 {
        rows.push((
            "matmul operand copies (bf16, the largest product's two operands)".to_string(),
            2 * mm as u64,
        ));
    }
    rows.push((
        "attention backward Δ [B, H, T] (fp32), gradient-norm partial sums (f64)".to_string(),
        4 * (s.b * s.h * s.t) as u64 + 8 * grad_norm_partials_len(n_params) as u64,
    ));
    rows
}

/// Token ids on the device, with the host copy they were uploaded from.
pub struct DeviceIds {
    dev: CudaSlice<u32>,
    host: Vec<u32>,
    /// The embedding backward's plan for the current ids (built on first use after an upload).
    plan: RefCell<Option<DeviceEmbeddingPlan>>,
}

impl DeviceIds {
    /// The ids on the device.
    pub fn device(&self) -> &CudaSlice<u32> {
        &self.dev
    }
}

/// Scratch of the gradient-norm reduction.
struct NormScratch {
    partials: CudaSlice<f64>,
    out: CudaSlice<f32>,
}

/// The GPU executor: one device, one stream, every kernel family of the training step.
pub struct CudaExecutor {
    gpu: CudaDevice,
    emb: EmbeddingKernels,
    ln: LayerNormKernels,
    pw: PointwiseKernels,
    mm: MatmulKernels,
    attn: AttentionKernels,
    ce: CrossEntropyKernels,
    opt: AdamWKernels,
    dec: DecodeKernels,
    norm: RefCell<Option<NormScratch>>,
}

/// `buf[off..off + len]` as a view, or an error naming the op.
fn view<'a>(what: &str, s: &Span<'a, CudaSlice<f32>>) -> Result<CudaView<'a, f32>> {
    s.buf.try_slice(s.off..s.off + s.len).ok_or_else(|| {
        anyhow!(
            "cuda executor: {what}: range {}..{} is outside a buffer of {} elements",
            s.off,
            s.off + s.len,
            s.buf.len()
        )
    })
}

/// `buf[off..off + len]` as a mutable view, or an error naming the op.
fn view_mut<'a>(what: &str, s: SpanMut<'a, CudaSlice<f32>>) -> Result<CudaViewMut<'a, f32>> {
    let (off, len, have) = (s.off, s.len, s.buf.len());
    s.buf.try_slice_mut(off..off + len).ok_or_else(|| {
        anyhow!(
            "cuda executor: {what}: range {off}..{} is outside a buffer of {have} elements",
            off + len
        )
    })
}

/// The elements a view names, as a device view (an error when it runs past its buffer).
fn tview<'a>(t: &Tensor<'a, CudaSlice<f32>>) -> Result<CudaView<'a, f32>> {
    view("view", &Span::new(t.buf, t.off, t.shape.len()))
}

/// The elements a written view names, as a mutable device view.
fn tview_mut<'b>(t: &'b mut TensorMut<'_, CudaSlice<f32>>) -> Result<CudaViewMut<'b, f32>> {
    let len = t.shape.len();
    view_mut("view", SpanMut::new(&mut *t.buf, t.off, len))
}

/// The first `n` elements of `buf` as a view, or an error.
fn prefix<'a, T>(what: &str, buf: &'a CudaSlice<T>, n: usize) -> Result<CudaView<'a, T>> {
    buf.try_slice(0..n).ok_or_else(|| {
        anyhow!(
            "cuda executor: buffer {what} holds {} elements, the op needs {n}",
            buf.len()
        )
    })
}

/// The first `n` elements of `buf` as a mutable view, or an error.
fn prefix_mut<'a, T>(
    what: &str,
    buf: &'a mut CudaSlice<T>,
    n: usize,
) -> Result<CudaViewMut<'a, T>> {
    let have = buf.len();
    buf.try_slice_mut(0..n).ok_or_else(|| {
        anyhow!("cuda executor: buffer {what} holds {have} elements, the op needs {n}")
    })
}

impl CudaExecutor {
    /// Wraps an opened backend (modules loaded) and looks up every kernel.
    pub fn new(gpu: CudaDevice) -> Result<Self> {
        Ok(CudaExecutor {
            emb: EmbeddingKernels::new(&gpu)?,
            ln: LayerNormKernels::new(&gpu)?,
            pw: PointwiseKernels::new(&gpu)?,
            mm: MatmulKernels::new(&gpu)?,
            attn: AttentionKernels::new(&gpu)?,
            ce: CrossEntropyKernels::new(&gpu)?,
            opt: AdamWKernels::new(&gpu)?,
            dec: DecodeKernels::new(&gpu)?,
            norm: RefCell::new(None),
            gpu,
        })
    }

    /// Opens CUDA device `ordinal` (see [`super::open_context`]).
    pub fn open(ordinal: usize) -> Result<Self> {
        Self::new(CudaDevice::open(ordinal)?)
    }

    /// The device, its modules and its stream.
    pub fn gpu(&self) -> &CudaDevice {
        &self.gpu
    }

    /// Elements of bf16 operand scratch the matmul kernels hold now (the async version's copies
    /// of the largest product launched so far; 0 with the staged version).
    pub fn matmul_scratch_elements(&self) -> usize {
        self.mm.scratch_elements()
    }

    fn err(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("cuda executor: {what}: {e}")
    }
}

impl Backend for CudaExecutor {
    type Elem = f32;
    type Buf = CudaSlice<f32>;
    type Ids = DeviceIds;
    /// bf16 logits (see `cuda/cross_entropy.cu`).
    type Logits = CudaSlice<bf16>;
    /// An event with timing, recorded on the executor's stream.
    type Mark = CudaEvent;

    fn name(&self) -> String {
        format!("cuda-f32/bf16-tensor-cores ({})", self.gpu.describe())
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        // cudarc refuses zero-length allocations: keep one unused element.
        self.gpu
            .stream()
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| {
                Self::err(
                    &format!("cannot allocate {len} floats ({} MiB)", (len * 4) >> 20),
                    e,
                )
            })
    }

    /// Device memory in use right now (total − free, as the driver reports it): this process's
    /// buffers and context, and anything else on the device.
    fn memory_in_use(&self) -> Result<Option<usize>> {
        let (free, total) = self
            .gpu
            .ctx()
            .mem_get_info()
            .map_err(|e| anyhow!("cannot read device memory: {e}"))?;
        Ok(Some(total.saturating_sub(free)))
    }

    fn buf_len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn zero(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        self.gpu
            .stream()
            .memset_zeros(buf)
            .map_err(|e| Self::err("zero", e))
    }

    fn upload(&self, host: &[f32], dst: &mut CudaSlice<f32>) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        let mut d = prefix_mut("upload destination", dst, host.len())?;
        self.gpu
            .stream()
            .memcpy_htod(host, &mut d)
            .map_err(|e| Self::err("upload", e))
    }

    fn download(&self, src: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.gpu
            .stream()
            .clone_dtoh(src)
            .map_err(|e| Self::err("download", e))
    }

    fn alloc_ids(&self, len: usize) -> Result<DeviceIds> {
        Ok(DeviceIds {
            dev: self
                .gpu
                .stream()
                .alloc_zeros::<u32>(len.max(1))
                .map_err(|e| Self::err("cannot allocate ids", e))?,
            host: vec![0; len],
            plan: RefCell::new(None),
        })
    }

    fn upload_ids(&self, host: &[u32], dst: &mut DeviceIds) -> Result<()> {
        if host.len() > dst.host.len() {
            bail!(
                "cuda executor: {} ids do not fit an id buffer of {}",
                host.len(),
                dst.host.len()
            );
        }
        dst.host[..host.len()].copy_from_slice(host);
        dst.plan.replace(None);
        if host.is_empty() {
            return Ok(());
        }
        let mut d = dst.dev.slice_mut(0..host.len());
        self.gpu
            .stream()
            .memcpy_htod(host, &mut d)
            .map_err(|e| Self::err("upload ids", e))
    }

    fn alloc_logits(&self, len: usize) -> Result<CudaSlice<bf16>> {
        self.gpu
            .stream()
            .alloc_zeros::<bf16>(len.max(1))
            .map_err(|e| {
                Self::err(
                    &format!(
                        "cannot allocate {len} bf16 logits ({} MiB)",
                        (len * 2) >> 20
                    ),
                    e,
                )
            })
    }

    fn mark(&self) -> Result<CudaEvent> {
        self.gpu
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| Self::err("recording an event", e))
    }

    fn seconds_between(&self, start: &CudaEvent, end: &CudaEvent) -> Result<f64> {
        let ms = start
            .elapsed_ms(end)
            .map_err(|e| Self::err("timing between two events", e))?;
        Ok(ms as f64 / 1e3)
    }

    fn sum(&self, x: &CudaSlice<f32>, n: usize) -> Result<f64> {
        if n == 0 {
            return Ok(0.0);
        }
        let v = self
            .gpu
            .stream()
            .clone_dtoh(&prefix("sum input", x, n)?)
            .map_err(|e| Self::err("sum (read back)", e))?;
        Ok(v.iter().fold(0.0f64, |a, &x| a + x as f64))
    }

    fn embedding_fwd(
        &self,
        out: &mut CudaSlice<f32>,
        ids: &DeviceIds,
        wte: Span<CudaSlice<f32>>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        let ids_v = ids
            .dev
            .try_slice(0..n)
            .ok_or_else(|| anyhow!("cuda executor: embedding_fwd: fewer than {n} ids"))?;
        self.emb.forward(
            &mut prefix_mut("embedding_fwd out", out, n * d)?,
            &ids_v,
            &view("embedding_fwd wte", &wte)?,
            n,
            d,
        )
    }

    fn embedding_bwd(
        &self,
        dwte: SpanMut<CudaSlice<f32>>,
        ids: &DeviceIds,
        dout: &CudaSlice<f32>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        if d == 0 || dwte.len % d != 0 {
            bail!(
                "cuda executor: embedding_bwd: table of {} elements is not [V, {d}]",
                dwte.len
            );
        }
        if n > ids.host.len() {
            bail!("cuda executor: embedding_bwd: fewer than {n} ids");
        }
        let vocab = dwte.len / d;
        let mut plan = ids.plan.borrow_mut();
        let stale = plan
            .as_ref()
            .map_or(true, |p| p.n() != n || p.vocab() != vocab);
        if stale {
            let host = EmbeddingBwdPlan::new(&ids.host[..n], vocab)?;
            *plan = Some(host.upload(self.gpu.stream())?);
        }
        let plan = plan.as_ref().expect("plan built above");
        self.emb.backward(
            &mut view_mut("embedding_bwd dwte", dwte)?,
            &prefix("embedding_bwd dout", dout, n * d)?,
            plan,
            d,
        )
    }

    fn layernorm_fwd(
        &self,
        out: &mut CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        n: usize,
        d: usize,
        eps: f64,
    ) -> Result<()> {
        self.ln.forward(
            &mut prefix_mut("layernorm_fwd out", out, n * d)?,
            &mut prefix_mut("layernorm_fwd mean", mean, n)?,
            &mut prefix_mut("layernorm_fwd rstd", rstd, n)?,
            &prefix("layernorm_fwd x", x, n * d)?,
            n,
            d,
            eps as f32,
        )
    }

    fn add_layernorm_fwd(
        &self,
        sum: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        d: usize,
        eps: f64,
    ) -> Result<()> {
        self.ln.forward_residual(
            &mut prefix_mut("add_layernorm_fwd out", out, n * d)?,
            &mut prefix_mut("add_layernorm_fwd mean", mean, n)?,
            &mut prefix_mut("add_layernorm_fwd rstd", rstd, n)?,
            &mut prefix_mut("add_layernorm_fwd sum", sum, n * d)?,
            &prefix("add_layernorm_fwd a", a, n * d)?,
            &prefix("add_layernorm_fwd b", b, n * d)?,
            n,
            d,
            eps as f32,
        )
    }

    fn layernorm_bwd(
        &self,
        dx: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        xhat: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        n: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.ln.backward(
            &mut prefix_mut("layernorm_bwd dx", dx, n * d)?,
            &prefix("layernorm_bwd dy", dy, n * d)?,
            &prefix("layernorm_bwd xhat", xhat, n * d)?,
            &prefix("layernorm_bwd rstd", rstd, n)?,
            n,
            d,
            accumulate,
        )
    }

    fn run_pointwise(&self, op: Pointwise<'_, CudaSlice<f32>>) -> Result<()> {
        let pw = &self.pw;
        match op {
            Pointwise::Add { mut out, a, b } => {
                let n = out.shape.len();
                pw.add(&mut tview_mut(&mut out)?, &tview(&a)?, &tview(&b)?, n)
            }
            Pointwise::AddRows { mut x, v } => {
                let (n, d) = (x.shape.dims()[0], x.shape.dims()[1]);
                pw.add_rows(&mut tview_mut(&mut x)?, &tview(&v)?, n, d)
            }
            Pointwise::Clamp { mut x, c } => {
                let n = x.shape.len();
                pw.clamp(&mut tview_mut(&mut x)?, n, c as f32)
            }
            Pointwise::ClampBwd { mut dx, x, c } => {
                let n = dx.shape.len();
                pw.clamp_bwd(&mut tview_mut(&mut dx)?, &tview(&x)?, n, c as f32)
            }
            Pointwise::Rope {
                mut qkv,
                table,
                s,
                transpose: false,
            } => pw.rope_fwd(&mut tview_mut(&mut qkv)?, &tview(&table)?, s),
            Pointwise::Rope {
                mut qkv,
                table,
                s,
                transpose: true,
            } => pw.rope_bwd(&mut tview_mut(&mut qkv)?, &tview(&table)?, s),
            Pointwise::SwigluFwd { mut h, gu } => {
                let (n, f) = (h.shape.dims()[0], h.shape.dims()[1]);
                pw.swiglu_fwd(&mut tview_mut(&mut h)?, &tview(&gu)?, n, f)
            }
            Pointwise::SwigluBwd { mut dgu, dh, gu } => {
                let (n, f) = (dh.shape.dims()[0], dh.shape.dims()[1]);
                pw.swiglu_bwd(&mut tview_mut(&mut dgu)?, &tview(&dh)?, &tview(&gu)?, n, f)
            }
        }
    }

    fn zero_range(&self, x: SpanMut<CudaSlice<f32>>) -> Result<()> {
        let mut v = view_mut("zero_range x", x)?;
        self.gpu
            .stream()
            .memset_zeros(&mut v)
            .map_err(|e| Self::err("zero_range", e))
    }

    fn matmul_fwd(
        &self,
        y: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: Span<CudaSlice<f32>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        self.mm.forward(
            &mut prefix_mut("matmul_fwd y", y, m * n)?,
            &prefix("matmul_fwd x", x, m * k)?,
            &view("matmul_fwd w", &w)?,
            m,
            k,
            n,
        )
    }

    fn matmul_bwd_x(
        &self,
        dx: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        w: Span<CudaSlice<f32>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        self.mm.backward_x(
            &mut prefix_mut("matmul_bwd_x dx", dx, m * k)?,
            &prefix("matmul_bwd_x dy", dy, m * n)?,
            &view("matmul_bwd_x w", &w)?,
            m,
            k,
            n,
        )
    }

    fn matmul_bwd_w(
        &self,
        dw: SpanMut<CudaSlice<f32>>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.mm.backward_w(
            &mut view_mut("matmul_bwd_w dw", dw)?,
            &prefix("matmul_bwd_w dy", dy, m * n)?,
            &prefix("matmul_bwd_w x", x, m * k)?,
            m,
            k,
            n,
            accumulate,
        )
    }

    fn logits_fwd(
        &self,
        logits: &mut CudaSlice<bf16>,
        x: &CudaSlice<f32>,
        wte: Span<CudaSlice<f32>>,
        m: usize,
        d: usize,
        v: usize,
    ) -> Result<()> {
        self.mm.forward(
            &mut prefix_mut("logits_fwd logits", logits, m * v)?,
            &prefix("logits_fwd x", x, m * d)?,
            &view("logits_fwd wte", &wte)?,
            m,
            d,
            v,
        )
    }

    fn logits_bwd(
        &self,
        dx: &mut CudaSlice<f32>,
        dwte: SpanMut<CudaSlice<f32>>,
        dlogits: &CudaSlice<bf16>,
        x: &CudaSlice<f32>,
        wte: Span<CudaSlice<f32>>,
        m: usize,
        d: usize,
        v: usize,
        accumulate: bool,
    ) -> Result<()> {
        let dl = prefix("logits_bwd dlogits", dlogits, m * v)?;
        self.mm.backward_x(
            &mut prefix_mut("logits_bwd dx", dx, m * d)?,
            &dl,
            &view("logits_bwd wte", &wte)?,
            m,
            d,
            v,
        )?;
        self.mm.backward_w(
            &mut view_mut("logits_bwd dwte", dwte)?,
            &dl,
            &prefix("logits_bwd x", x, m * d)?,
            m,
            d,
            v,
            accumulate,
        )
    }

    fn attention_fwd(
        &self,
        z: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        s: AttnShape,
        shift: Option<Span<CudaSlice<f32>>>,
    ) -> Result<()> {
        let shift = shift
            .map(|sh| view("attention_fwd shift", &sh))
            .transpose()?;
        self.attn.forward(
            &mut prefix_mut("attention_fwd z", z, s.n() * s.d())?,
            &mut prefix_mut("attention_fwd lse", lse, s.b * s.h * s.t)?,
            &prefix("attention_fwd qkv", qkv, s.n() * 3 * s.d())?,
            s,
            shift.as_ref(),
        )
    }

    fn attention_bwd(
        &self,
        dqkv: &mut CudaSlice<f32>,
        dz: &CudaSlice<f32>,
        z: &CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        s: AttnShape,
    ) -> Result<()> {
        self.attn.backward(
            &mut prefix_mut("attention_bwd dqkv", dqkv, s.n() * 3 * s.d())?,
            &prefix("attention_bwd dz", dz, s.n() * s.d())?,
            &prefix("attention_bwd z", z, s.n() * s.d())?,
            &prefix("attention_bwd qkv", qkv, s.n() * 3 * s.d())?,
            &prefix("attention_bwd lse", lse, s.b * s.h * s.t)?,
            s,
        )
    }

    fn cross_entropy(
        &self,
        logits: &mut CudaSlice<bf16>,
        losses: &mut CudaSlice<f32>,
        targets: &DeviceIds,
        n: usize,
        v: usize,
        grad_scale: Option<f64>,
    ) -> Result<()> {
        let t = targets
            .dev
            .try_slice(0..n)
            .ok_or_else(|| anyhow!("cuda executor: cross_entropy: fewer than {n} targets"))?;
        self.ce.forward_backward(
            &mut prefix_mut("cross_entropy logits", logits, n * v)?,
            &mut prefix_mut("cross_entropy losses", losses, n)?,
            &t,
            n,
            v,
            grad_scale.map(|s| s as f32),
        )
    }

    fn norm_sq(&self, g: &CudaSlice<f32>, n: usize) -> Result<f64> {
        if n == 0 {
            return Ok(0.0);
        }
        let parts = grad_norm_partials_len(n);
        let mut scratch = self.norm.borrow_mut();
        if scratch.as_ref().map_or(true, |s| s.partials.len() < parts) {
            let s = self.gpu.stream();
            *scratch = Some(NormScratch {
                partials: s
                    .alloc_zeros::<f64>(parts)
                    .map_err(|e| Self::err("grad-norm scratch", e))?,
                out: s
                    .alloc_zeros::<f32>(1)
                    .map_err(|e| Self::err("grad-norm scratch", e))?,
            });
        }
        let sc = scratch.as_mut().expect("allocated above");
        self.opt.grad_norm(
            &prefix("norm_sq input", g, n)?,
            &mut sc.partials,
            &mut sc.out.as_view_mut(),
        )?;
        let partials = self
            .gpu
            .stream()
            .clone_dtoh(&sc.partials.slice(0..parts))
            .map_err(|e| Self::err("norm_sq (read back)", e))?;
        Ok(partials.iter().sum())
    }

    fn adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        n: usize,
        args: &StepArgs,
    ) -> Result<()> {
        self.opt.step(
            &mut prefix_mut("adamw params", p, n)?,
            &prefix("adamw grads", g, n)?,
            &mut prefix_mut("adamw m", m, n)?,
            &mut prefix_mut("adamw v", v, n)?,
            None,
            args,
            Clip::Host,
        )
    }

    fn kv_append(
        &self,
        qkv: &mut CudaSlice<f32>,
        k_cache: &mut CudaSlice<f32>,
        v_cache: &mut CudaSlice<f32>,
        table: &CudaSlice<f32>,
        meta: &DeviceIds,
        n: usize,
        c: CacheShape,
    ) -> Result<()> {
        // The kernel indexes the cache with (row, pos) unchecked: check the host copy.
        crate::backend::cpu::decode::read_meta(&meta.host, n, c)
            .map_err(|e| e.context("cuda executor: kv_append"))?;
        let m = meta.dev.try_slice(0..n * DECODE_META).ok_or_else(|| {
            anyhow!("cuda executor: kv_append: metadata of fewer than {n} tokens")
        })?;
        self.dec.kv_append(
            &mut prefix_mut("kv_append qkv", qkv, n * 3 * c.d())?,
            &mut prefix_mut("kv_append k_cache", k_cache, c.len())?,
            &mut prefix_mut("kv_append v_cache", v_cache, c.len())?,
            &prefix("kv_append table", table, c.t_max * c.dh)?,
            &m,
            n,
            c,
        )
    }

    fn attention_decode(
        &self,
        z: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
        meta: &DeviceIds,
        n: usize,
        c: CacheShape,
        shift: Option<Span<CudaSlice<f32>>>,
    ) -> Result<()> {
        crate::backend::cpu::decode::read_meta(&meta.host, n, c)
            .map_err(|e| e.context("cuda executor: attention_decode"))?;
        let m = meta.dev.try_slice(0..n * DECODE_META).ok_or_else(|| {
            anyhow!("cuda executor: attention_decode: metadata of fewer than {n} tokens")
        })?;
        let shift = shift
            .map(|sh| view("attention_decode shift", &sh))
            .transpose()?;
        self.dec.attention_decode(
            &mut prefix_mut("attention_decode z", z, n * c.d())?,
            &prefix("attention_decode qkv", qkv, n * 3 * c.d())?,
            &prefix("attention_decode k_cache", k_cache, c.len())?,
            &prefix("attention_decode v_cache", v_cache, c.len())?,
            &m,
            n,
            c,
            shift.as_ref(),
        )
    }
}
