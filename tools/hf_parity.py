#!/usr/bin/env python3
"""Check that a baddata checkpoint is a real Hugging Face OLMo model.

Loads CHECKPOINT_DIR (model.safetensors + config.json written by `train`) with
`transformers.OlmoForCausalLM`, runs it in fp32 on the token ids stored in LOGITS_FILE (written by
`cargo run --release --example dump_logits -- CHECKPOINT_DIR LOGITS_FILE`), and compares its
logits with baddata's: relative error ||hf - ours|| / ||hf|| must be under 1e-4.

Usage: python3 tools/hf_parity.py CHECKPOINT_DIR LOGITS_FILE
Needs torch, transformers and safetensors. Exit status 0 on agreement, 1 otherwise.
"""
import json
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ckpt, logits_file = sys.argv[1], sys.argv[2]
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import OlmoConfig, OlmoForCausalLM

    cfg = OlmoConfig.from_pretrained(ckpt)
    for field in ("tie_word_embeddings", "rope_theta", "clip_qkv", "attention_bias", "hidden_act"):
        print(f"config.{field} = {getattr(cfg, field, '<absent>')!r}")
    try:
        model = OlmoForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    except TypeError:  # transformers 4.x spells it torch_dtype
        model = OlmoForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32)
    model.eval()
    # the head is the embedding exactly when config.json says it is tied (an untied model,
    # e.g. one continued from OLMo-1B-0724 with train --init-from, has its own lm_head)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tied_as_configured = tied == bool(cfg.tie_word_embeddings)
    ref = load_file(logits_file)
    ids = ref["ids"].long()
    ours = ref["logits"].float()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model.to(dev)
    with torch.no_grad():
        hf = model(ids.to(dev)).logits.float().cpu()
    rel = ((hf - ours).norm() / hf.norm()).item()
    mx = (hf - ours).abs().max().item()
    ok = rel < 1e-4 and tied_as_configured and hf.shape == ours.shape
    result = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "shape": list(hf.shape),
        "tied_embeddings": tied,
        "tied_as_configured": tied_as_configured,
        "rel_error": rel,
        "max_abs_error": mx,
        "pass": ok,
    }
    print(json.dumps(result))
    print(f"HF OlmoForCausalLM parity: rel error {rel:.3e}, max abs {mx:.3e} -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
