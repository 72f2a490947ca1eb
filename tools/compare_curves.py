#!/usr/bin/env python3
"""Compare the training-loss curves of two `train` runs (their log.jsonl files).

Usage:
  compare_curves.py REF.jsonl RUN.jsonl [--rel 0.02]   loss within REL relative to REF's
  compare_curves.py RUN1.jsonl RUN2.jsonl --identical  losses equal bit for bit

Each line of a log.jsonl is one optimizer step: {"step", "loss", "lr", "grad_norm",
"tokens_per_s", ["val_loss"]}. Both logs must report the same, non-empty set of steps (each at
most once). With --rel, every step must satisfy |run - ref| <= REL * |ref|, all finite. With
--identical, the loss of every step must be the same number as written in the JSON text (the
shortest text that round-trips an f32, so equal text is equal bits). --field picks another
numeric field (default loss).

Prints one summary line. Exit status: 0 pass, 1 mismatch, 2 unreadable input or bad usage.
"""
import argparse
import json
import math
import sys


class LogError(Exception):
    pass


def read_log(path, field):
    """Returns {step: text of the field's number} in file order, the text exactly as written."""
    out = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise LogError(f"{path}: cannot open ({e.strerror})")
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                # keep numbers as their text: bit-for-bit comparison needs the digits as written
                entry = json.loads(line, parse_float=str, parse_int=str)
            except ValueError as e:
                raise LogError(f"{path}:{n}: not JSON ({e})")
            if not isinstance(entry, dict) or "step" not in entry or field not in entry:
                raise LogError(f"{path}:{n}: expected an object with \"step\" and \"{field}\"")
            try:
                step = int(entry["step"])
            except (TypeError, ValueError):
                raise LogError(f"{path}:{n}: \"step\" is not an integer: {entry['step']!r}")
            value = entry[field]
            if not isinstance(value, str):
                raise LogError(f"{path}:{n}: \"{field}\" is not a number: {value!r}")
            if step in out:
                raise LogError(f"{path}:{n}: step {step} logged twice")
            out[step] = value
    return out


def main():
    ap = argparse.ArgumentParser(description="Compare the loss curves of two log.jsonl files.")
    ap.add_argument("ref", help="reference log.jsonl (e.g. the CPU run)")
    ap.add_argument("run", help="log.jsonl to check (e.g. the GPU run)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--rel", type=float, default=0.02,
                      help="largest relative difference allowed at any step (default 0.02)")
    mode.add_argument("--identical", action="store_true",
                      help="require bit-identical values (the JSON text of each number)")
    ap.add_argument("--field", default="loss", help="numeric field to compare (default loss)")
    a = ap.parse_args()
    if not a.identical and not (a.rel >= 0 and math.isfinite(a.rel)):
        print(f"compare_curves: --rel must be a finite number >= 0 (got {a.rel})", file=sys.stderr)
        return 2
    try:
        ref = read_log(a.ref, a.field)
        run = read_log(a.run, a.field)
    except LogError as e:
        print(f"compare_curves: {e}", file=sys.stderr)
        print(f"curves ({a.field}): unreadable input -> FAIL")
        return 2

    if not ref or not run:
        empty = " and ".join(p for p, d in ((a.ref, ref), (a.run, run)) if not d)
        print(f"curves ({a.field}): no steps logged in {empty} -> FAIL")
        return 1
    if set(ref) != set(run):
        only_ref = sorted(set(ref) - set(run))
        only_run = sorted(set(run) - set(ref))
        print(f"curves ({a.field}): step sets differ: {len(only_ref)} only in {a.ref} "
              f"{only_ref[:5]}, {len(only_run)} only in {a.run} {only_run[:5]} -> FAIL")
        return 1
    steps = sorted(ref)
    span = f"{len(steps)} steps ({steps[0]}..{steps[-1]})"

    if a.identical:
        diff = [s for s in steps if ref[s] != run[s]]
        if diff:
            s = diff[0]
            print(f"curves ({a.field}): {span}, {len(diff)} differ; first at step {s}: "
                  f"{ref[s]} vs {run[s]} -> FAIL")
            return 1
        print(f"curves ({a.field}): {span}, all bit-identical -> PASS")
        return 0

    worst_step, worst = None, -1.0
    bad = []
    for s in steps:
        r, x = float(ref[s]), float(run[s])
        if not (math.isfinite(r) and math.isfinite(x)):
            bad.append(s)
            worst_step, worst = s, math.inf
            continue
        rel = abs(x - r) / abs(r) if r != 0 else (0.0 if x == 0 else math.inf)
        if rel > a.rel:
            bad.append(s)
        if rel > worst:
            worst_step, worst = s, rel
    verdict = "FAIL" if bad else "PASS"
    extra = f", {len(bad)} over the limit (first at step {bad[0]})" if bad else ""
    print(f"curves ({a.field}): {span}, max rel diff {worst:.2e} at step {worst_step} "
          f"({ref[worst_step]} vs {run[worst_step]}; limit {a.rel:.2e}){extra} -> {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
