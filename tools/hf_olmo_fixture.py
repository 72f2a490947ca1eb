#!/usr/bin/env python3
"""Write tiny Hugging Face OLMo v1 checkpoints and their reference logits (tests/fixtures/hf-olmo/).

Each checkpoint is laid out as `transformers`' `save_pretrained` writes an `OlmoForCausalLM`:
`config.json` with OlmoConfig's field names, the weights under HF's tensor names, and for the
sharded one `model-0000N-of-0000M.safetensors` plus `model.safetensors.index.json` ("metadata":
{"total_size"}, "weight_map": {tensor: shard}), tensors assigned to shards in order until the next
would pass MAX_SHARD_BYTES, as save_pretrained's `max_shard_size` does. No tokenizer.json is
written (the loader must take one from --tokenizer).

  untied-clip-bf16-sharded/   shaped like allenai/OLMo-1B-0724-hf: bf16 weights, an untied
                              `lm_head.weight`, `clip_qkv` set (low enough that about a fifth of
                              the q, k, v values of this random model are clipped), 3 shards
  tied-f32-single/            shaped like allenai/OLMo-1B-hf: fp32 weights in one
                              model.safetensors, tied head (no lm_head.weight), clip_qkv null

Beside each, `reference.safetensors` holds `ids` (I64 [B, T]) and `logits` (F64 [B, T, V]): the
logits of an independent float64 numpy forward pass written from HF's OlmoForCausalLM code
(modeling_olmo.py), on the weights exactly as stored (bf16 values widened):
  x = E[ids]; per layer: h = LN(x); q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ; if clip_qkv: q, k, v clamped
  to [−c, c] (OlmoAttention's clamp_, before RoPE); RoPE (rotate-half, inv_freq = θ^(−2i/dh));
  causal softmax(q·kᵀ/√dh)·v; x += z·Woᵀ; h = LN(x); x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ;
  logits = LN(x)·Hᵀ, H = lm_head.weight (untied) or E (tied).
LN is OlmoLayerNorm: no weight, no bias, biased variance, eps 1e-5.

Usage: python3 tools/hf_olmo_fixture.py OUT_DIR   (the repository keeps OUT_DIR = tests/fixtures/hf-olmo)
Needs numpy and safetensors (recorded with numpy 2.4.6, safetensors 0.8.0 in a throwaway venv:
`python3 -m venv /tmp/v && /tmp/v/bin/pip install numpy safetensors`). Deterministic: the same
versions give the same tensors (the order of the metadata keys may vary).
"""
import json
import os
import sys

import numpy as np
import safetensors

SEED = 20250504
MAX_SHARD_BYTES = 16 * 1024
BATCH, SEQ = 2, 12

BASE_CONFIG = {
    "architectures": ["OlmoForCausalLM"],
    "model_type": "olmo",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": None,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "hidden_act": "silu",
    "hidden_size": 32,
    "intermediate_size": 48,
    "initializer_range": 0.02,
    "max_position_embeddings": 16,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 4,
    "rope_scaling": None,
    "rope_theta": 20000.0,
    "use_cache": True,
    "vocab_size": 96,
    "transformers_version": "4.44.0",
}


def bf16_bits(x):
    """float32 array -> uint16 bf16 bits, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def make_weights(cfg, rng, tied):
    """HF-named weights as float32, std 1/sqrt(fan_in) (non-trivial logits on a random model)."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    w = {"model.embed_tokens.weight": rng.normal(0, 1 / np.sqrt(d), (v, d))}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        for n in ("q", "k", "v", "o"):
            w[f"{p}.self_attn.{n}_proj.weight"] = rng.normal(0, 1 / np.sqrt(d), (d, d))
        w[f"{p}.mlp.gate_proj.weight"] = rng.normal(0, 1 / np.sqrt(d), (f, d))
        w[f"{p}.mlp.up_proj.weight"] = rng.normal(0, 1 / np.sqrt(d), (f, d))
        w[f"{p}.mlp.down_proj.weight"] = rng.normal(0, 1 / np.sqrt(f), (d, f))
    if not tied:
        w["lm_head.weight"] = rng.normal(0, 1 / np.sqrt(d), (v, d))
    return {k: a.astype(np.float32) for k, a in w.items()}


def layer_norm(x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(cfg, w, ids):
    """float64 logits [T, V] of one sequence; also the share of q, k, v values clipped."""
    d, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    dh = d // nh
    t = len(ids)
    clip = cfg.get("clip_qkv")
    x = w["model.embed_tokens.weight"][ids]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (np.arange(0, dh, 2) / dh))
    freqs = np.outer(np.arange(t), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    clipped, total = 0, 0
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        h = layer_norm(x)
        q, k, v = (h @ w[f"{p}.self_attn.{n}_proj.weight"].T for n in ("q", "k", "v"))
        if clip is not None:
            for a in (q, k, v):
                clipped += int((np.abs(a) > clip).sum())
                total += a.size
            q, k, v = (np.clip(a, -clip, clip) for a in (q, k, v))
        q, k, v = (a.reshape(t, nh, dh).transpose(1, 0, 2) for a in (q, k, v))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        s = q @ k.transpose(0, 2, 1) / np.sqrt(dh) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        z = (s @ v).transpose(1, 0, 2).reshape(t, d)
        x = x + z @ w[f"{p}.self_attn.o_proj.weight"].T
        h = layer_norm(x)
        g = h @ w[f"{p}.mlp.gate_proj.weight"].T
        u = h @ w[f"{p}.mlp.up_proj.weight"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ w[f"{p}.mlp.down_proj.weight"].T
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return layer_norm(x) @ head.T, (clipped, total)


def spec(arr, dtype):
    return safetensors.TensorSpec(
        dtype=dtype, shape=list(arr.shape), data_ptr=arr.ctypes.data, data_len=arr.nbytes
    )


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (contiguous numpy array, safetensors dtype name)."""
    data = safetensors.serialize(
        {k: spec(a, dt) for k, (a, dt) in tensors.items()}, metadata or {"format": "pt"}
    )
    with open(path, "wb") as f:
        f.write(data)


def write_checkpoint(out, cfg, w, dtype, sharded):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    if dtype == "bfloat16":
        stored = {k: (bf16_bits(a), "bfloat16") for k, a in w.items()}
        exact = {k: bf16_to_f64(a) for k, (a, _) in stored.items()}
    else:
        stored = {k: (np.ascontiguousarray(a), "float32") for k, a in w.items()}
        exact = {k: a.astype(np.float64) for k, a in w.items()}
    if not sharded:
        write_safetensors(os.path.join(out, "model.safetensors"), stored)
        return exact
    shards, cur, size = [], {}, 0
    for k, (a, dt) in stored.items():
        if cur and size + a.nbytes > MAX_SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = (a, dt)
        size += a.nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(out, name), shard)
        weight_map.update({k: name for k in shard})
    index = {
        "metadata": {"total_size": sum(a.nbytes for a, _ in stored.values())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return exact


def write_reference(out, cfg, exact, rng):
    ids = rng.integers(0, cfg["vocab_size"], (BATCH, SEQ), dtype=np.int64)
    logits, clipped, total = [], 0, 0
    for row in ids:
        lg, (c, n) = forward(cfg, exact, row)
        logits.append(lg)
        clipped, total = clipped + c, total + n
    logits = np.ascontiguousarray(np.stack(logits), dtype=np.float64)
    meta = {
        "made_by": "tools/hf_olmo_fixture.py",
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "qkv_values_clipped": str(clipped),
        "qkv_values": str(total),
    }
    write_safetensors(
        os.path.join(out, "reference.safetensors"),
        {"ids": (ids, "int64"), "logits": (logits, "float64")},
        meta,
    )
    share = f"{clipped}/{total} q, k, v values clipped" if total else "no clip"
    print(f"{out}: {len(exact)} tensors, logits {list(logits.shape)}, {share}")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    rng = np.random.default_rng(SEED)

    cfg = dict(BASE_CONFIG, tie_word_embeddings=False, clip_qkv=1.25, torch_dtype="bfloat16")
    w = make_weights(cfg, rng, tied=False)
    out = os.path.join(root, "untied-clip-bf16-sharded")
    exact = write_checkpoint(out, cfg, w, "bfloat16", sharded=True)
    write_reference(out, cfg, exact, rng)

    cfg = dict(BASE_CONFIG, tie_word_embeddings=True, clip_qkv=None, torch_dtype="float32")
    w = make_weights(cfg, rng, tied=True)
    out = os.path.join(root, "tied-f32-single")
    exact = write_checkpoint(out, cfg, w, "float32", sharded=False)
    write_reference(out, cfg, exact, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
