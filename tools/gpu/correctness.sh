#!/usr/bin/env bash
# Runs on the GPU machine (CUDA driver, no Rust), from the folder tools/gpu-check.sh staged.
# Every staged test harness runs with BADDATA_GPU_REQUIRED=1 (a missing GPU fails instead of
# ignoring the tests); then the additional checks below. Full logs go to $OUT (default
# ./gpu-out); a short table is printed last. Exits non-zero when anything failed, was ignored,
# or ran no test.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-./gpu-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export BADDATA_GPU_REQUIRED=1
limit="${TEST_TIMEOUT:-200}"

{ cat "$here/MANIFEST.txt" 2>/dev/null; echo; nvidia-smi 2>&1; } >"$out/environment.txt"

rows=()
status=0
add_row() { rows+=("$(printf '%-34s %-6s %s' "$1" "$2" "$3")"); }

for t in "$here"/bin/tests/*; do
  [[ -x "$t" ]] || continue
  name="$(basename "$t")"
  log="$out/test-$name.log"
  t0=$(date +%s)
  timeout "$limit" "$t" >"$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  # libtest summary: "test result: ok. 5 passed; 0 failed; 1 ignored; ..."
  res="$(grep -E '^test result:' "$log" | tail -n1)"
  passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$res")"
  failed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$res")"
  ignored="$(sed -nE 's/.* ([0-9]+) ignored.*/\1/p' <<<"$res")"
  passed=${passed:-0} failed=${failed:-0} ignored=${ignored:-0}
  verdict=ok
  if ((rc != 0 || failed > 0 || ignored > 0 || passed == 0)); then
    verdict=FAIL
    status=1
  fi
  add_row "tests/$name" "$verdict" "$passed passed, $failed failed, $ignored ignored, rc $rc, ${secs}s"
  if [[ "$verdict" == FAIL ]]; then
    { echo "---- tests/$name (last lines of $log)"; tail -n 15 "$log"; } >&2
  fi
done

# ======================= additional checks (run when staged) =======================
# HF parity: hf/hf_parity.py compares this engine with transformers' OlmoForCausalLM.
# It gets the stage folder and the output folder, and must exit non-zero on a mismatch.
if [[ -f "$here/hf/hf_parity.py" ]]; then
  t0=$(date +%s)
  timeout "$limit" python3 "$here/hf/hf_parity.py" "$here/hf/checkpoint" "$here/hf/logits.safetensors" >"$out/hf-parity.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  detail="$(grep -E '^HF OlmoForCausalLM parity' "$out/hf-parity.log" | tail -n1)"
  if ((rc == 0)); then add_row "hf_parity" ok "${detail:-} ${secs}s"; else add_row "hf_parity" FAIL "rc $rc, ${detail:-see hf-parity.log} ${secs}s"; status=1; fi
fi
# ===================================================================================

if ((${#rows[@]} == 0)); then
  echo "correctness: nothing staged under $here/bin/tests" >&2
  exit 1
fi
echo
echo "correctness ($(date -u +%Y-%m-%dT%H:%M:%SZ); logs in $out)"
printf '%-34s %-6s %s\n' "check" "result" "details"
printf '%s\n' "${rows[@]}"
exit "$status"
