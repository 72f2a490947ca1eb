#!/usr/bin/env bash
# The README's toy section: the default `toy` run (its figure and numbers are copied into docs/),
# then the same experiment with one setting changed at a time, and a table of the entanglement
# of both groups at the smallest and the largest share and of the gap's change between them.
#
# Probe settings (--layer, --negatives, --probe-from, --probe-l2) need no training: those
# variants reuse the default run's cells (all 10 seeds and 8 shares). Training settings retrain,
# on SEEDS seeds and SHARES shares (default 5 and 0.01,0.1,1/3); their "defaults" row reuses the
# default run's cells for those seeds and shares. Finished cells stay under runs/toy*/cells/, so
# a rerun only trains what is missing.
#
# Usage: bash tools/toy-sensitivity.sh   (SEEDS=5 SHARES=0.01,0.1,0.3333333333333333;
#        SKIP_DEFAULT=1: the default run is in runs/toy already, do not copy it to docs/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seeds="${SEEDS:-5}"
shares="${SHARES:-0.01,0.1,0.3333333333333333}"
cargo build --release --bin toy
toy=target/release/toy

t0=$(date +%s)
"$toy" --out runs/toy --quiet
echo "toy-sensitivity: default run took $(($(date +%s) - t0)) s" >&2
if [ -z "${SKIP_DEFAULT:-}" ]; then
  cp runs/toy/entanglement.png docs/toy-entanglement.png
  cp runs/toy/results.csv docs/toy-entanglement.csv
  cp runs/toy/results.json docs/toy-results.json
fi

summary() { # summary DIR LABEL: one table row from DIR/results.json
  python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1] + "/results.json"))
p = sorted(r["points"], key=lambda p: p["share"])
lo, hi = p[0], p[-1]
f = lambda m: f"{m['mean']:.3f} [{m['ci_lo']:.3f}, {m['ci_hi']:.3f}]"
g = r["gap_change"]["summary"]
print(f"| {sys.argv[2]} | {f(lo['rare'])} | {f(lo['others'])} | {f(hi['rare'])} | {f(hi['others'])} "
      f"| {f(g)} | {lo['rare_probe_auc']['mean']:.3f} |")
EOF
}
header() {
  echo "| changed | underrepr., smallest share | others, smallest | underrepr., largest share | others, largest | gap change (smallest − largest) | probe AUC, underrepr., smallest |"
  echo "|---|---|---|---|---|---|---|"
}

# probe settings: the default run's models, probed otherwise
probe_variants=(
  "layer-0|--layer 0"
  "layer-1|--layer 1"
  "layer-2|--layer 2"
  "negatives-all|--negatives all"
  "probe-from-4|--probe-from 4"
  "probe-l2-0.01|--probe-l2 0.01"
)
echo "Probe settings (the default run's 80 models, 10 seeds x 8 shares):"
header
summary runs/toy "defaults (block 3's output)"
for v in "${probe_variants[@]}"; do
  name="${v%%|*}"
  flags="${v#*|}"
  mkdir -p "runs/toy-probe-$name/cells"
  cp -n runs/toy/cells/*.json "runs/toy-probe-$name/cells/"
  # shellcheck disable=SC2086
  "$toy" $flags --out "runs/toy-probe-$name" --quiet >/dev/null
  summary "runs/toy-probe-$name" "$flags"
done

# training settings: retrained, on fewer seeds and shares
train_variants=(
  "base|"
  "heads-2|--n-heads 2"
  "d-ff-64|--d-ff 64"
  "steps-12000|--steps 12000"
  "seq-64|--seq 64"
  "no-decay|--weight-decay 0"
  "rare-chain-2|--rare-chain 2"
)
rows=()
for v in "${train_variants[@]}"; do
  name="${v%%|*}"
  flags="${v#*|}"
  t0=$(date +%s)
  if [ "$name" = base ]; then
    mkdir -p runs/toy-train-base/cells
    cp -n runs/toy/cells/*.json runs/toy-train-base/cells/
  fi
  # shellcheck disable=SC2086
  "$toy" --seeds "$seeds" --shares "$shares" $flags --out "runs/toy-train-$name" --quiet >/dev/null
  echo "toy-sensitivity: $name took $(($(date +%s) - t0)) s" >&2
  rows+=("$(summary "runs/toy-train-$name" "${flags:-defaults}")")
done
echo
echo "Training settings (retrained: $seeds seeds, shares $shares):"
header
printf '%s\n' "${rows[@]}"
