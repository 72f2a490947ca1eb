#!/usr/bin/env python3
"""Independent reference of `evaluate --benchmark`: lm-evaluation-harness v0.4.12's rules and an
OLMo forward pass, written here in Python with numpy alone (plus the `tokenizers` package to run
the checkpoint's tokenizer.json). Nothing of baddata runs: the weights are read from the
checkpoint's safetensors file and the forward pass is reimplemented in float64 (HF
`OlmoForCausalLM`: non-parametric layernorm, rotate-half RoPE, causal softmax attention, SwiGLU,
the head tied to the embedding unless an `lm_head.weight` is present, optional clip_qkv).

Per item it applies the harness's task formatting (hellaswag's preprocess, ARC/PIQA
"Question: ...\\nAnswer:", MMLU's subject header and lettered choices, lambada_openai's last-word
split), `_encode_pair` (trailing context whitespace moved to the continuation; the
continuation's tokens are those of encode(context + continuation) after encode(context)), the
window cut `(ctx + cont)[-(window + 1):][:-1]`, then sums the continuation's log-softmax and
checks the greedy argmax. acc takes the highest log-likelihood, acc_norm the highest per
character (MMLU: acc only), LAMBADA's acc is the greedy match and its perplexity
exp(-mean log-likelihood).

Few-shot examples: MMLU's are the first k dev questions of the subject (deterministic, as in
the harness). The other tasks draw theirs with baddata's own seeded rule, so with --shots > 0
for them pass --fewshot-from DIR, a directory of baddata's NAME-items.jsonl, to read which
examples each item used (the formatting of the examples is still done here).

  # record the fixture the Rust test checks (tests/benchmark.rs):
  python3 tools/benchmark_reference.py --checkpoint tests/fixtures/benchmark/model \\
      --benchmark-dir tests/fixtures/benchmark --benchmarks all --shots 0 \\
      --out tests/fixtures/benchmark/reference-0shot.json
  # compare with a run of baddata (its output directory):
  python3 tools/benchmark_reference.py --checkpoint runs/demo/step-001000 \\
      --benchmarks arc_easy --limit 50 --compare runs/demo/step-001000/benchmarks

Needs numpy and tokenizers (python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy
tokenizers==0.22.2, the version baddata's Rust `tokenizers` crate has). Exit status 1 when
--compare finds a log-likelihood more than --tol (default 1e-4) away, or another choice.
"""
import argparse
import gzip
import json
import math
import os
import re
import struct
import sys

import numpy as np

ALL = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "mmlu", "lambada"]
STEMS = {"lambada": "lambada_openai"}


# ---------------------------------------------------------------- data and harness formatting

def read_jsonl(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    # split on "\n" alone: str.splitlines() would also cut at U+2028, U+0085, ... inside strings
    return [json.loads(l) for l in raw.decode("utf-8").split("\n") if l.strip()]


def find(dir_, stem):
    for name in (stem + ".jsonl.gz", stem + ".jsonl"):
        p = os.path.join(dir_, name)
        if os.path.isfile(p):
            return p
    raise SystemExit(f"no {stem}.jsonl(.gz) in {dir_}")


def hellaswag_preprocess(text):
    # lm_eval/tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def docs_of(name, rows):
    """The harness's (query, choices, gold, subject) of each row."""
    out = []
    for r in rows:
        if name == "hellaswag":
            ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
            out.append((hellaswag_preprocess(r["activity_label"] + ": " + ctx),
                        [hellaswag_preprocess(e) for e in r["endings"]], int(r["label"]), None))
        elif name in ("arc_easy", "arc_challenge"):
            out.append(("Question: " + r["question"] + "\nAnswer:", list(r["choices"]["text"]),
                        r["choices"]["label"].index(r["answerKey"]), None))
        elif name == "piqa":
            out.append(("Question: " + r["goal"] + "\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]), None))
        elif name == "mmlu":
            c = r["choices"]
            q = r["question"].strip() + "\nA. " + c[0] + "\nB. " + c[1] + "\nC. " + c[2] + "\nD. " + c[3] + "\nAnswer:"
            out.append((q, ["A", "B", "C", "D"], int(r["answer"]), r["subject"]))
        elif name == "lambada":
            words = r["text"].split(" ")
            out.append((" ".join(words[:-1]), [" " + words[-1]], 0, None))
    return out


def selected(name, docs, limit):
    if limit is None:
        return list(range(len(docs)))
    if name != "mmlu":
        return list(range(min(limit, len(docs))))
    count, out = {}, []
    for i, d in enumerate(docs):
        if count.get(d[3], 0) < limit:
            count[d[3]] = count.get(d[3], 0) + 1
            out.append(i)
    return out


# ---------------------------------------------------------------- the model, in numpy

def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        buf = data[a:b]
        if v["dtype"] == "F32":
            x = np.frombuffer(buf, dtype="<f4")
        elif v["dtype"] == "F16":
            x = np.frombuffer(buf, dtype="<f2")
        elif v["dtype"] == "BF16":
            x = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{path}: tensor {k}: dtype {v['dtype']} not handled")
        out[k] = x.astype(np.float64).reshape(v["shape"])
    return out


class Olmo:
    def __init__(self, ckpt):
        cfg = json.load(open(os.path.join(ckpt, "config.json")))
        self.d = cfg["hidden_size"]
        self.h = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.theta = cfg.get("rope_theta", 10000.0)
        self.window = cfg["max_position_embeddings"]
        self.clip = cfg.get("clip_qkv")
        self.eps = 1e-5  # OlmoLayerNorm's
        self.w = read_safetensors(os.path.join(ckpt, "model.safetensors"))
        self.head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])

    def ln(self, x):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps)

    def logits(self, ids):
        t, d, h = len(ids), self.d, self.h
        dh = d // h
        w = self.w
        x = w["model.embed_tokens.weight"][ids]
        inv = 1.0 / (self.theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
        ang = np.outer(np.arange(t, dtype=np.float64), inv)
        emb = np.concatenate([ang, ang], -1)
        cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]

        def rope(q):
            q1, q2 = q[..., : dh // 2], q[..., dh // 2:]
            return q * cos + np.concatenate([-q2, q1], -1) * sin

        mask = np.triu(np.full((t, t), -np.inf), 1)
        for l in range(self.layers):
            p = f"model.layers.{l}."
            a = self.ln(x)
            q, k, v = (a @ w[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
            if self.clip is not None:
                q, k, v = (np.clip(y, -self.clip, self.clip) for y in (q, k, v))
            q, k, v = (y.reshape(t, h, dh) for y in (q, k, v))
            q, k = rope(q), rope(k)
            s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(dh) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            z = np.einsum("hqk,khd->qhd", s, v).reshape(t, d)
            x = x + z @ w[p + "self_attn.o_proj.weight"].T
            a = self.ln(x)
            g = a @ w[p + "mlp.gate_proj.weight"].T
            u = a @ w[p + "mlp.up_proj.weight"].T
            x = x + ((g / (1.0 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
        return self.ln(x) @ self.head.T


# ---------------------------------------------------------------- the harness's scoring

def encode_pair(tok, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation).ids
    ctx = tok.encode(context).ids
    return ctx, whole[len(ctx):]


def loglikelihood(model, tok, context, continuation):
    ctx, cont = encode_pair(tok, context, continuation)
    assert cont, (context, continuation)
    inp = (ctx + cont)[-(model.window + 1):][:-1]
    logits = model.logits(np.array(inp))[len(inp) - len(cont):]
    lse = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
    logp = logits[np.arange(len(cont)), cont] - lse
    greedy = bool((logits.argmax(-1) == np.array(cont)).all())
    return float(logp.sum()), greedy, len(ctx) + len(cont) > model.window + 1


def run(name, args, model, tok):
    stem = STEMS.get(name, name)
    docs = docs_of(name, read_jsonl(find(args.benchmark_dir, stem)))
    dev = docs_of("mmlu", read_jsonl(find(args.benchmark_dir, "mmlu_dev"))) if name == "mmlu" and args.shots else []
    theirs = {}
    if args.shots and name != "mmlu":
        if not args.fewshot_from:
            raise SystemExit(f"{name}: --shots {args.shots} needs --fewshot-from (baddata's draw)")
        theirs = {it["index"]: it["fewshot"] for it in read_jsonl(os.path.join(args.fewshot_from, f"{name}-items.jsonl"))}
    items = []
    for i in selected(name, docs, args.limit):
        q, choices, gold, subject = docs[i]
        ctx = ""
        if name == "mmlu":
            ctx = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            shots = [d for d in dev if d[3] == subject][: args.shots]
        else:
            shots = [docs[j] for j in theirs.get(i, [])][: args.shots] if args.shots else []
            assert len(shots) == args.shots, (name, i)
        for fq, fc, fg, _ in shots:
            ctx += fq + " " + fc[fg] + "\n\n"
        ctx += q
        conts = choices if name == "lambada" else [" " + c for c in choices]
        res = [loglikelihood(model, tok, ctx, c) for c in conts]
        lls = [r[0] for r in res]
        item = {"index": i, "gold": gold, "lls": lls, "greedy": [r[1] for r in res],
                "pred": int(np.argmax(lls)), "truncated": any(r[2] for r in res)}
        if name not in ("mmlu", "lambada"):
            item["pred_norm"] = int(np.argmax(np.array(lls) / np.array([float(len(c)) for c in choices])))
        items.append(item)
        print(f"\r{name}: {len(items)} items", end="", file=sys.stderr)
    print(file=sys.stderr)
    acc = [float(it["greedy"][0]) if name == "lambada" else float(it["pred"] == it["gold"]) for it in items]
    out = {"n": len(items), "acc": float(np.mean(acc)), "items": items}
    if name not in ("mmlu", "lambada"):
        out["acc_norm"] = float(np.mean([float(it["pred_norm"] == it["gold"]) for it in items]))
    if name == "lambada":
        out["perplexity"] = math.exp(-float(np.mean([it["lls"][0] for it in items])))
    return out


def compare(name, ref, ours_dir, tol):
    ours = {it["index"]: it for it in read_jsonl(os.path.join(ours_dir, f"{name}-items.jsonl"))}
    worst, bad = 0.0, []
    for it in ref["items"]:
        o = ours.get(it["index"])
        if o is None:
            bad.append(f"item {it['index']} missing from baddata's output")
            continue
        d = max(abs(a - b) for a, b in zip(it["lls"], o["lls"]))
        worst = max(worst, d)
        if d > tol or len(it["lls"]) != len(o["lls"]):
            bad.append(f"item {it['index']}: log-likelihoods differ by {d:.3g}")
        for k in ("pred", "pred_norm", "greedy"):
            if k in it and it[k] != o.get(k):
                bad.append(f"item {it['index']}: {k} {it[k]} (reference) vs {o.get(k)} (baddata)")
    print(f"{name}: {len(ref['items'])} items, max |ll difference| {worst:.3e}, "
          f"{len(bad)} disagreements" + "".join("\n  " + b for b in bad[:10]))
    return worst, bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory (model.safetensors, config.json, tokenizer.json)")
    ap.add_argument("--benchmark-dir", default="assets/benchmarks", help="benchmark files (default: %(default)s)")
    ap.add_argument("--benchmarks", default="all", help="comma separated, or all (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="first N items (MMLU: of each subject)")
    ap.add_argument("--shots", type=int, default=0, help="few-shot examples (default: %(default)s)")
    ap.add_argument("--fewshot-from", help="directory of baddata's NAME-items.jsonl (which examples each item used)")
    ap.add_argument("--out", help="write the reference JSON here")
    ap.add_argument("--compare", help="baddata's output directory to compare with")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest allowed |log-likelihood difference| (default: %(default)s)")
    args = ap.parse_args()
    from tokenizers import Tokenizer, __version__ as tok_version

    names = ALL if args.benchmarks == "all" else args.benchmarks.split(",")
    model = Olmo(args.checkpoint)
    tok = Tokenizer.from_file(os.path.join(args.checkpoint, "tokenizer.json"))
    results = {}
    for n in names:
        if n == "piqa" and not any(os.path.isfile(os.path.join(args.benchmark_dir, f)) for f in ("piqa.jsonl", "piqa.jsonl.gz")):
            print("piqa: no file in the benchmark directory, skipped", file=sys.stderr)
            continue
        results[n] = run(n, args, model, tok)
    meta = {"rules": "lm-evaluation-harness v0.4.12", "forward": "numpy float64", "numpy": np.__version__,
            "tokenizers": tok_version, "checkpoint": args.checkpoint, "shots": args.shots, "limit": args.limit}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "benchmarks": results}, f, indent=1)
            f.write("\n")
        os.replace(tmp, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    status = 0
    if args.compare:
        for n, r in results.items():
            _, bad = compare(n, r, args.compare, args.tol)
            status |= bool(bad)
    return status


if __name__ == "__main__":
    sys.exit(main())
