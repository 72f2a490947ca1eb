#!/usr/bin/env bash
# Runs on the GPU machine (CUDA driver, Python with torch + transformers, no Rust), from the
# folder tools/gpu-check.sh staged. Full logs go to $OUT (default ./gpu-out); a short table is
# printed last. Exits non-zero when anything failed, timed out, was ignored, or ran no test.
#
# Rows and their time budgets (seconds; 220 at most, under 4 minutes with start-up):
#   tests/*            100 shared by every staged harness (each gets what the earlier ones left,
#                      at most TEST_TIMEOUT), run with BADDATA_GPU_REQUIRED=1 so a missing GPU
#                      fails instead of ignoring the tests
#   demo_gpu_vs_cpu     30 the demo's 50 steps with `train --device cuda`: loss within 2% of the
#                      staged CPU curve at every step (py/compare_curves.py --rel 0.02)
#   demo_gpu_repeat     30 the same run again: losses bit-identical to the first GPU run
#   hf_parity_gpu_ckpt  40 the first GPU run's final checkpoint -> logits on the CPU
#                      (bin/dump_logits, 10 of the 40) -> transformers' OlmoForCausalLM (hf_parity.py)
#   hf_parity_cpu_ckpt  20 only when there is no GPU checkpoint: the same check on a one-step CPU
#                      run of the demo made here (20 for the run, then the 40 above instead)
# Override with TESTS_BUDGET, TEST_TIMEOUT, DEMO_TIMEOUT, HF_TIMEOUT.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=unpack.sh
source "$here/unpack.sh"
out="${OUT:-./gpu-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export BADDATA_GPU_REQUIRED=1
tests_budget="${TESTS_BUDGET:-100}"
test_timeout="${TEST_TIMEOUT:-100}"
demo_timeout="${DEMO_TIMEOUT:-30}"
hf_timeout="${HF_TIMEOUT:-30}"
start=$(date +%s)

{ cat "$here/MANIFEST.txt" 2>/dev/null; echo; nvidia-smi 2>&1; } >"$out/environment.txt"

rows=()
status=0
add_row() { rows+=("$(printf '%-22s %-6s %s' "$1" "$2" "$3")"); }
fail_row() { add_row "$1" FAIL "$2"; status=1; }
# "timeout" for the exit codes of timeout(1), else "rc N".
rc_text() { if (($1 == 124 || $1 == 137)); then echo "timed out"; else echo "rc $1"; fi; }
# Why a run failed, from its log: the first line with "error", else the last line.
why() { grep -m1 -i 'error' "$1" 2>/dev/null || tail -n1 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- test harnesses
n_harness=0
for t in "$here"/bin/tests/*; do
  [[ -x "$t" ]] || continue
  n_harness=$((n_harness + 1))
  name="$(basename "$t")"
  log="$out/test-$name.log"
  left=$((tests_budget - ($(date +%s) - start)))
  limit=$((left < test_timeout ? left : test_timeout))
  if ((limit < 5)); then
    fail_row "tests/$name" "not run: the ${tests_budget}s test budget is spent"
    continue
  fi
  t0=$(date +%s)
  timeout -k 5 "$limit" "$t" >"$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  # libtest summary: "test result: ok. 5 passed; 0 failed; 1 ignored; ..."
  res="$(grep -E '^test result:' "$log" | tail -n1)"
  passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$res")"
  failed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$res")"
  ignored="$(sed -nE 's/.* ([0-9]+) ignored.*/\1/p' <<<"$res")"
  passed=${passed:-0} failed=${failed:-0} ignored=${ignored:-0}
  detail="$passed passed, $failed failed, $ignored ignored, $(rc_text "$rc"), ${secs}s (limit ${limit}s)"
  if ((rc != 0 || failed > 0 || ignored > 0 || passed == 0)); then
    fail_row "tests/$name" "$detail"
    { echo "---- tests/$name (last lines of $log)"; tail -n 15 "$log"; } >&2
  else
    add_row "tests/$name" ok "$detail"
  fi
done
if ((n_harness == 0)); then
  fail_row "tests" "nothing staged under $here/bin/tests"
fi

# ---------------------------------------------------------------- the demo on the GPU
# Each run starts in its own directory whose runs/demo-data is the staged demo data, so `train`
# uses the CPU reference's tokenizer and shards instead of preparing its own.
demo_run() { # demo_run NAME: trains into $out/NAME, log in $out/NAME.log; returns train's status
  local dir="$out/$1"
  rm -rf "$dir" "$out/$1-cwd"
  mkdir -p "$out/$1-cwd/runs"
  ln -s "$here/demo/demo-data" "$out/$1-cwd/runs/demo-data"
  local args
  read -r -a args <"$here/demo/args"
  (cd "$out/$1-cwd" && timeout -k 5 "$demo_timeout" "$here/bin/train" --device cuda "${args[@]}" --out "$dir") >"$out/$1.log" 2>&1
}
# The one-line verdict compare_curves.py prints (its last line).
curve_line() { tail -n1 "$1" | sed -E 's/^curves \(loss\): //'; }

gpu1_ok=0
if [[ -x "$here/bin/train" && -f "$here/demo/cpu/log.jsonl" ]]; then
  t0=$(date +%s)
  demo_run demo-gpu-1
  rc=$?
  secs=$(($(date +%s) - t0))
  if ((rc != 0)); then
    fail_row demo_gpu_vs_cpu "train: $(rc_text "$rc"), ${secs}s: $(why "$out/demo-gpu-1.log")"
  else
    gpu1_ok=1
    python3 "$here/py/compare_curves.py" "$here/demo/cpu/log.jsonl" "$out/demo-gpu-1/log.jsonl" --rel 0.02 >"$out/demo-gpu-vs-cpu.txt" 2>&1
    rc=$?
    line="$(curve_line "$out/demo-gpu-vs-cpu.txt")"
    if ((rc == 0)); then add_row demo_gpu_vs_cpu ok "$line, train ${secs}s"; else fail_row demo_gpu_vs_cpu "$line"; fi
  fi

  t0=$(date +%s)
  demo_run demo-gpu-2
  rc=$?
  secs=$(($(date +%s) - t0))
  if ((rc != 0)); then
    fail_row demo_gpu_repeat "train: $(rc_text "$rc"), ${secs}s: $(why "$out/demo-gpu-2.log")"
  elif ((gpu1_ok == 0)); then
    fail_row demo_gpu_repeat "no first GPU run to compare with"
  else
    python3 "$here/py/compare_curves.py" "$out/demo-gpu-1/log.jsonl" "$out/demo-gpu-2/log.jsonl" --identical >"$out/demo-gpu-repeat.txt" 2>&1
    rc=$?
    line="$(curve_line "$out/demo-gpu-repeat.txt")"
    if ((rc == 0)); then add_row demo_gpu_repeat ok "$line, train ${secs}s"; else fail_row demo_gpu_repeat "$line"; fi
  fi
else
  fail_row demo_gpu_vs_cpu "bin/train or demo/cpu/log.jsonl not staged"
fi

# ---------------------------------------------------------------- Hugging Face parity
# hf_row NAME CHECKPOINT: this engine's CPU logits for the checkpoint (bin/dump_logits, 2 x 128
# seeded ids) against transformers' OlmoForCausalLM loading the same files (hf/hf_parity.py).
hf_row() {
  local t0 rc secs detail logits="$out/$1-logits.safetensors"
  t0=$(date +%s)
  timeout -k 5 10 "$here/bin/dump_logits" "$2" "$logits" 2 128 >"$out/$1-dump.log" 2>&1
  rc=$?
  if ((rc != 0)); then
    fail_row "$1" "dump_logits: $(rc_text "$rc"): $(why "$out/$1-dump.log")"
    return
  fi
  timeout -k 5 "$hf_timeout" python3 "$here/hf/hf_parity.py" "$2" "$logits" >"$out/$1.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  detail="$(grep -E '^HF OlmoForCausalLM parity' "$out/$1.log" | tail -n1 | sed -E 's/^HF OlmoForCausalLM parity: //')"
  if ((rc == 0)); then
    add_row "$1" ok "${detail:-} ${secs}s"
  else
    fail_row "$1" "$(rc_text "$rc"), ${secs}s: ${detail:-$(tail -n1 "$out/$1.log")} ($1.log)"
  fi
}
ck=""
if ((gpu1_ok == 1)); then
  ck="$out/demo-gpu-1/$(cat "$out/demo-gpu-1/latest" 2>/dev/null)"
  if [[ -f "$ck/model.safetensors" ]]; then
    hf_row hf_parity_gpu_ckpt "$ck"
  else
    fail_row hf_parity_gpu_ckpt "no final checkpoint in $out/demo-gpu-1 (latest -> ${ck##*/})"
    ck=""
  fi
else
  fail_row hf_parity_gpu_ckpt "no GPU run to take a checkpoint from"
fi
if [[ -z "$ck" ]]; then
  # Without a GPU checkpoint, still check that transformers reads what `train` writes: a
  # one-step CPU run of the demo made here (the rows above already failed).
  mkdir -p "$out/hf-cpu-cwd/runs"
  ln -sfn "$here/demo/demo-data" "$out/hf-cpu-cwd/runs/demo-data"
  rm -rf "$out/hf-cpu"
  (cd "$out/hf-cpu-cwd" && timeout -k 5 20 "$here/bin/train" --device cpu --steps 1 --eval-every 1000 --quiet --out "$out/hf-cpu") >"$out/hf-cpu.log" 2>&1
  rc=$?
  if ((rc == 0)); then
    hf_row hf_parity_cpu_ckpt "$out/hf-cpu/$(cat "$out/hf-cpu/latest")"
  else
    fail_row hf_parity_cpu_ckpt "train --device cpu --steps 1: $(rc_text "$rc"): $(why "$out/hf-cpu.log")"
  fi
fi

echo
echo "correctness ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - start))s; logs in $out)"
printf '%-22s %-6s %s\n' "check" "result" "details"
printf '%s\n' "${rows[@]}"
exit "$status"
