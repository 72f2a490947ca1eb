#!/usr/bin/env bash
# The README's toy section: the default `toy` run (its figure and numbers are copied into docs/),
# then the same experiment with one setting changed at a time, on fewer seeds and shares, and a
# table of the gap (underrepresented minus others) at the smallest and the largest share.
# Finished cells are kept under runs/toy-*/cells/, so a rerun only trains what is missing.
#
# Usage: bash tools/toy-sensitivity.sh   (SEEDS=5 SHARES=0.01,0.1,0.3333333333333333 for the
#        variants; SKIP_DEFAULT=1 to leave the default run out. The "base" variant reuses the
#        default run's cells of those shares and seeds.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seeds="${SEEDS:-5}"
shares="${SHARES:-0.01,0.1,0.3333333333333333}"
cargo build --release --bin toy
toy=target/release/toy

if [ -z "${SKIP_DEFAULT:-}" ]; then
  t0=$(date +%s)
  "$toy" --out runs/toy --quiet
  echo "toy-sensitivity: default run took $(($(date +%s) - t0)) s" >&2
  cp runs/toy/entanglement.png docs/toy-entanglement.png
  cp runs/toy/results.csv docs/toy-entanglement.csv
  cp runs/toy/results.json docs/toy-results.json
fi

# name and flags of each variant (one setting changed from the defaults)
variants=(
  "base|"
  "negatives-all|--negatives all"
  "heads-2|--n-heads 2"
  "d-ff-64|--d-ff 64"
  "steps-12000|--steps 12000"
  "seq-64|--seq 64"
  "probe-from-4|--probe-from 4"
  "probe-l2-0.01|--probe-l2 0.01"
  "no-decay|--weight-decay 0"
)
summary() { # summary DIR: one table row from DIR/results.json
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1] + "/results.json"))
p = sorted(r["points"], key=lambda p: p["share"])
lo, hi = p[0], p[-1]
f = lambda m: f"{m['mean']:.3f} [{m['ci_lo']:.3f}, {m['ci_hi']:.3f}]"
g = r["gap_change"]["summary"]
print(f"| {sys.argv[1]} | {f(lo['rare'])} | {f(lo['others'])} | {f(hi['rare'])} | {f(hi['others'])} "
      f"| {f(g)} | {lo['rare_probe_auc']['mean']:.3f} |")
EOF
}
rows=()
for v in "${variants[@]}"; do
  name="${v%%|*}"
  flags="${v#*|}"
  t0=$(date +%s)
  if [ "$name" = base ] && [ -d runs/toy/cells ]; then
    mkdir -p runs/toy-sens-base/cells
    cp -n runs/toy/cells/*.json runs/toy-sens-base/cells/
  fi
  # shellcheck disable=SC2086
  "$toy" --seeds "$seeds" --shares "$shares" $flags --out "runs/toy-sens-$name" --quiet >/dev/null
  echo "toy-sensitivity: $name took $(($(date +%s) - t0)) s" >&2
  rows+=("$(summary "runs/toy-sens-$name")")
done
echo "| run | underrepr. at smallest share | others at smallest | underrepr. at largest | others at largest | gap change (smallest − largest) | probe AUC, underrepr., smallest share |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
