#!/usr/bin/env bash
# Runs on the GPU machine, from the folder tools/gpu-check.sh staged: every staged bench binary
# with short criterion settings (warm-up 1 s, measurement 3 s, 10 samples; override with
# BENCH_ARGS). Full logs and criterion's data go to $OUT (default ./gpu-out); each bench's
# summary table is printed last. Exits non-zero when a bench fails.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-./gpu-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export CRITERION_HOME="$out/criterion"
export BADDATA_GPU_REQUIRED=1  # a bench without a GPU fails instead of benchmarking the CPU
read -r -a args <<<"${BENCH_ARGS:---warm-up-time 1 --measurement-time 3 --sample-size 10}"

status=0
summaries=()
for b in "$here"/bin/benches/*; do
  [[ -x "$b" ]] || continue
  name="$(basename "$b")"
  log="$out/bench-$name.log"
  t0=$(date +%s)
  timeout "${BENCH_TIMEOUT:-330}" "$b" --bench "${args[@]}" >"$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  if ((rc != 0)); then
    status=1
    tail -n 20 "$log" >&2
  fi
  summaries+=("== $name: rc $rc, ${secs}s, log $log")
  # The bench prints its own table after a line starting with "summary".
  summaries+=("$(sed -n '/^summary/,$p' "$log")")
done
if ((${#summaries[@]} == 0)); then
  echo "speed: nothing staged under $here/bin/benches" >&2
  exit 1
fi
echo
echo "speed ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
printf '%s\n' "${summaries[@]}"
exit "$status"
