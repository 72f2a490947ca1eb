#!/usr/bin/env python3
"""PyTorch baseline of one training step, for comparison with `train --device cuda --synthetic`.

Builds Hugging Face `OlmoForCausalLM` from a `config.json` as baddata's checkpoints carry it
(`cargo run --release --example preset_config -- olmo-1b olmo-1b/config.json` writes one for a
preset), and trains it on uniform random tokens the way baddata does:
  - fp32 master weights, bf16 autocast for the forward and backward;
  - loss: mean cross-entropy of B x T next-token predictions (rows of T + 1 random ids);
  - global-norm gradient clip 1.0, then fused AdamW with OLMo-1B's hyper-parameters (lr 4e-4,
    betas (0.9, 0.95), eps 1e-5, weight decay 0.1 on the projections, none on the embedding);
  - torch.compile of the whole loss (model + cross-entropy), default mode.
After --warmup steps (the first one compiles), --steps timed steps, each closed by
torch.cuda.synchronize(). Reports tokens/s and step time (medians), the peak of
torch.cuda.max_memory_allocated() (peak_mem_bytes), the device memory in use after the first
step (mem_used_after_first_step_bytes, total - free: what `train` reports), and MFU against 989 and 798 TFLOP/s, with training FLOPs per
token counted as src/perf.rs counts them (exact causal attention):
    6 * (L * (4 D^2 + 3 D F) + V D) + 6 * L * D * (T + 1)

Usage: torch_baseline.py --config DIR_OR_CONFIG_JSON --batch B --seq T
                         [--steps 10] [--warmup 3] [--out result.json] [--no-compile]
Prints one JSON object (also written to --out) and a one-line summary. A failure (no GPU, out
of memory, compile error, non-finite loss, ...) is reported in the JSON ("ok": false, "phase",
"error_kind", "error") and the exit status is 1; bad usage exits 2.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

PEAK_BF16_TFLOPS_DATASHEET = 989.0
PEAK_BF16_TFLOPS_MEASURED = 798.0


def train_flops_per_token(cfg, seq):
    """Same formula as src/perf.rs: exact causal count, the tied head counted once."""
    l, d, f, v = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    n_matmul = l * (4 * d * d + 3 * d * f) + v * d
    return 6.0 * n_matmul + 6.0 * l * d * (seq + 1), n_matmul


def mfu(tokens_per_s, flops_per_token, peak_tflops):
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def error_kind(exc):
    """Names what failed: oom, compile, or error."""
    import torch

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return "oom"
    mod = type(exc).__module__ or ""
    if mod.startswith(("torch._dynamo", "torch._inductor")) or "BackendCompilerFailed" in text:
        return "compile"
    return "error"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="config.json, or a directory holding one")
    ap.add_argument("--batch", type=int, required=True, help="sequences per step")
    ap.add_argument("--seq", type=int, required=True, help="tokens per sequence")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--out", help="write the result JSON here too")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-compile", action="store_true", help="eager mode (for comparison)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu only checks this script on a machine without a GPU (no timings worth reading)")
    a = ap.parse_args()
    if a.batch < 1 or a.seq < 1 or a.steps < 1 or a.warmup < 1:
        ap.error("--batch, --seq, --steps and --warmup must be positive (warm-up includes the compile)")

    path = os.path.join(a.config, "config.json") if os.path.isdir(a.config) else a.config
    result = {
        "ok": False,
        "tool": "torch_baseline",
        "config": path,
        "batch": a.batch,
        "seq": a.seq,
        "warmup": a.warmup,
        "steps": a.steps,
        "compiled": not a.no_compile,
        "device_kind": a.device,
    }
    phase = "config"

    def finish(code):
        text = json.dumps(result)
        print(text)
        if a.out:
            with open(a.out, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        if result["ok"]:
            peak = result.get("peak_mem_bytes")
            peak = f"{peak / 2**30:.1f} GiB" if isinstance(peak, int) else "-"
            print(
                f"torch baseline: {result['tokens_per_s']:.0f} tokens/s, "
                f"{result['step_ms_median']:.1f} ms/step, peak {peak}, "
                f"MFU {100 * result['mfu_989']:.1f}% of 989 / {100 * result['mfu_798']:.1f}% of 798 TFLOP/s"
            )
        else:
            print(f"torch baseline: FAILED in {result.get('phase')} ({result.get('error_kind')}): "
                  f"{result.get('error', '')[:300]}")
        return code

    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads"):
            if not isinstance(raw.get(k), int):
                raise ValueError(f"{path}: field {k!r} missing or not an integer")
        vocab_real = int((raw.get("baddata") or {}).get("vocab_real", raw["vocab_size"]))
        flops_tok, n_matmul = train_flops_per_token(raw, a.seq)
        result.update(flops_per_token=flops_tok, params_formula=n_matmul, vocab_real=vocab_real)

        phase = "import"
        import torch
        import torch.nn.functional as F
        import transformers
        from transformers import AutoModelForCausalLM, OlmoConfig

        result.update(torch=torch.__version__, transformers=transformers.__version__)
        phase = "device"
        cuda = a.device == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to PyTorch")
        dev = torch.device(a.device)
        result["device"] = torch.cuda.get_device_name() if cuda else "cpu"

        def sync():
            if cuda:
                torch.cuda.synchronize()

        phase = "build"
        torch.manual_seed(a.seed)
        cfg = OlmoConfig.from_json_file(path)
        cfg.use_cache = False
        with dev:
            try:
                model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
            except (TypeError, ValueError) as e:
                print(f"torch baseline: from_config(attn_implementation='sdpa') refused ({e}); "
                      "using the default attention", file=sys.stderr)
                model = AutoModelForCausalLM.from_config(cfg)
        model = model.to(device=dev, dtype=torch.float32)
        model.train()
        result["model_class"] = type(model).__name__
        result["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
        emb = model.get_input_embeddings().weight
        tied = model.get_output_embeddings().weight is emb
        params = list(model.parameters())  # unique: the tied head appears once
        n_params = sum(p.numel() for p in params)
        result.update(params=n_params, tied_embeddings=tied)
        if not tied:
            raise RuntimeError("the output head is not tied to the embedding (config.json says tie_word_embeddings?)")
        if n_params != n_matmul:
            print(f"torch baseline: warning: the model has {n_params} parameters, the formula {n_matmul}",
                  file=sys.stderr)
        decay = [p for p in params if p is not emb]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": [emb], "weight_decay": 0.0}],
            lr=4e-4, betas=(0.9, 0.95), eps=1e-5, fused=True,
        )
        vocab = raw["vocab_size"]

        def loss_fn(ids):
            x, y = ids[:, :-1], ids[:, 1:]
            with torch.autocast(a.device, dtype=torch.bfloat16):
                logits = model(input_ids=x, use_cache=False).logits
            return F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))

        step_loss = loss_fn if a.no_compile else torch.compile(loss_fn)
        gen = torch.Generator(device=dev)
        gen.manual_seed(a.seed)

        def step():
            ids = torch.randint(0, vocab_real, (a.batch, a.seq + 1), device=dev, generator=gen)
            loss = step_loss(ids)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        phase = "compile+warmup"
        t0 = time.perf_counter()
        for i in range(a.warmup):
            loss = step()
            if i == 0 and cuda:
                # what `train` reports as peak_mem_bytes: device memory in use (total - free,
                # so the CUDA context and the caching allocator's reserve included) after the
                # first step
                sync()
                free, total = torch.cuda.mem_get_info()
                result["mem_used_after_first_step_bytes"] = total - free
        sync()
        result["warmup_s"] = time.perf_counter() - t0
        first = loss.item()

        phase = "timed"
        times, losses = [], []
        for _ in range(a.steps):
            t = time.perf_counter()
            loss = step()
            sync()
            times.append(time.perf_counter() - t)
            losses.append(loss.item())
        if not all(math.isfinite(x) for x in [first] + losses):
            raise RuntimeError(f"non-finite loss: warm-up {first}, timed {losses}")
        med = statistics.median(times)
        tps = a.batch * a.seq / med
        result.update(
            ok=True,
            tokens_per_s=tps,
            step_ms_median=1e3 * med,
            step_ms_min=1e3 * min(times),
            step_ms_max=1e3 * max(times),
            peak_mem_bytes=torch.cuda.max_memory_allocated() if cuda else None,
            peak_reserved_bytes=torch.cuda.max_memory_reserved() if cuda else None,
            mfu_989=mfu(tps, flops_tok, PEAK_BF16_TFLOPS_DATASHEET),
            mfu_798=mfu(tps, flops_tok, PEAK_BF16_TFLOPS_MEASURED),
            loss_first=first,
            loss_last=losses[-1],
            # uniform random ids: the loss should start near ln(vocab_real)
            ln_vocab=math.log(vocab_real),
        )
        result.pop("phase", None)
        return finish(0)
    except Exception as e:  # report every failure in the JSON, never silently
        traceback.print_exc(file=sys.stderr)
        result.update(phase=phase, error=f"{type(e).__name__}: {e}"[:4000])
        try:
            result["error_kind"] = error_kind(e)
        except ImportError:
            result["error_kind"] = "error"
        try:
            import torch

            if a.device == "cuda" and torch.cuda.is_available():
                result["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
        except Exception:
            pass
        return finish(1)


if __name__ == "__main__":
    sys.exit(main())
