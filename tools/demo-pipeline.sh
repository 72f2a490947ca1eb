#!/usr/bin/env bash
# The README's demo pipeline, end to end on the embedded demo: train the tiny model, probe its
# heads, steer the top 4 and evaluate the trade-off over alpha (with a random-direction control),
# then copy the two plots the README shows into docs/. Prints the wall time of each stage; the
# numbers the README quotes come from runs/demo/ (final.json, probe/, probe-k4/,
# step-001000/eval/results.md).
#
# Usage: bash tools/demo-pipeline.sh   (DEVICE=cpu|cuda|auto, default cpu: the README's figures
# are CPU runs)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
device=(--device "${DEVICE:-cpu}")

stage() { # stage NAME CMD...: runs CMD, prints NAME and its wall time
  local name="$1" t0
  shift
  t0=$(date +%s)
  "$@"
  echo "demo-pipeline: $name took $(($(date +%s) - t0)) s" >&2
}
cargo build --release --bins
rm -rf runs/demo
stage train target/release/train "${device[@]}" --quiet
stage probe target/release/probe --demo "${device[@]}"
stage probe-k4 target/release/probe --demo "${device[@]}" --top-k 4 --out runs/demo/probe-k4
stage evaluate target/release/evaluate --demo "${device[@]}" \
  --intervention runs/demo/probe-k4/intervention.json --alphas 0,2,4,8 --random-control 1
ck="runs/demo/$(cat runs/demo/latest)"
cp runs/demo/loss.png docs/demo-loss.png
cp "$ck/eval/"*.png docs/demo-iti.png
cat runs/demo/final.json
echo
cat "$ck/eval/results.md"
