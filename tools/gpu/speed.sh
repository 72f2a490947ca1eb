#!/usr/bin/env bash
# Runs on the GPU machine (CUDA driver, Python with torch + transformers, no Rust), from the
# folder tools/gpu-check.sh staged: training throughput of this engine and of PyTorch side by
# side, then the kernel benches. Full logs go to $OUT (default ./gpu-out); the tables are printed
# last. Exits non-zero when a row fails or times out.
#
# Rows and their time budgets (seconds; 350 in all, under 6 minutes with start-up):
#   ours  olmo-124m 64 x 1024    30  bin/train --device cuda --synthetic --no-checkpoint,
#   ours  olmo-1b    8 x 2048    70  13 steps: summary.json's medians over steps 3..10; the
#                                    last 2 are profiled (--profile 2: time per op, profile.md)
#   torch olmo-124m 64 x 1024    70  py/torch_baseline.py: HF OlmoForCausalLM, torch.compile, bf16
#   torch olmo-1b    8 x 2048   100  autocast, fused AdamW; 3 warm-up steps (the first compiles:
#                                    most of the budget), 10 timed
#   kernel benches               80  shared by every staged bench (each gets what the earlier ones
#                                    left), short criterion settings (BENCH_ARGS)
# Tokens/s, step time, MFU (989 TFLOP/s datasheet and 798 measured bf16 peaks; FLOPs per token
# counted as src/perf.rs does), device memory, and ours/torch per model. Each run's parameter
# count and FLOPs per token must equal those its config.json implies, or the row is marked
# "not comparable" and fails.
# Override with OURS_STEPS, TORCH_STEPS, TORCH_WARMUP, OURS_124M_TIMEOUT, OURS_1B_TIMEOUT,
# TORCH_124M_TIMEOUT, TORCH_1B_TIMEOUT, BENCH_BUDGET, BENCH_ARGS, SKIP_BENCHES=1, SKIP_TRAIN=1;
# run part of it with PRESETS="olmo-1b" (training rows, default both) and BENCHES="matmul"
# (bench binaries, default every staged one).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=unpack.sh
source "$here/unpack.sh"
out="${OUT:-./gpu-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export CRITERION_HOME="$out/criterion"
export BADDATA_GPU_REQUIRED=1 # a bench without a GPU fails instead of benchmarking the CPU
read -r -a bench_args <<<"${BENCH_ARGS:---warm-up-time 0.5 --measurement-time 1 --sample-size 10}"
bench_budget="${BENCH_BUDGET:-80}"
presets="${PRESETS:-olmo-124m olmo-1b}"
# "yes" when word $1 is in the list $2
listed() { [[ " $2 " == *" $1 "* ]]; }
# A name in PRESETS or BENCHES that matches nothing is an error, not a silently empty run.
for p in $presets; do
  if [[ "$p" != olmo-124m && "$p" != olmo-1b ]]; then
    echo "speed.sh: PRESETS: unknown preset '$p' (known: olmo-124m olmo-1b)" >&2
    exit 2
  fi
done
for b in ${BENCHES:-}; do
  if [[ ! -x "$here/bin/benches/$b" ]]; then  # (unpack.sh has unpacked bin/ by now)
    echo "speed.sh: BENCHES: no staged bench '$b' (staged: $(ls "$here/bin/benches" 2>/dev/null | tr '\n' ' '))" >&2
    exit 2
  fi
done
ours_steps="${OURS_STEPS:-13}"
torch_steps="${TORCH_STEPS:-10}"
torch_warmup="${TORCH_WARMUP:-3}"
start=$(date +%s)
status=0

{ cat "$here/MANIFEST.txt" 2>/dev/null; echo; nvidia-smi 2>&1; } >"$out/environment.txt"
rc_text() { if (($1 == 124 || $1 == 137)); then echo "timed out"; else echo "rc $1"; fi; }
# Why a run failed, from its log: the first line with "error", else the last line.
why() { grep -m1 -i 'error' "$1" 2>/dev/null || tail -n1 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- training throughput
# Each run leaves $out/<impl>-<preset>.json (ours: summary.json as train writes it; torch: the
# baseline's JSON) and a status file the table reads: "ok" or the reason it failed.
ours() { # ours PRESET BATCH SEQ TIMEOUT
  local name="ours-$1" t0 rc
  rm -rf "${out:?}/$name" "$out/$name.json"
  t0=$(date +%s)
  timeout -k 5 "$4" "$here/bin/train" --device cuda --synthetic --no-checkpoint --quiet \
    --preset "$1" --batch "$2" --seq "$3" --steps "$ours_steps" --eval-every 1000000 \
    --profile 2 --out "$out/$name" >"$out/$name.log" 2>&1
  rc=$?
  cp "$out/$name/profile.md" "$out/$name-profile.md" 2>/dev/null
  if ((rc == 0)) && [[ -f "$out/$name/summary.json" ]]; then
    cp "$out/$name/summary.json" "$out/$name.json"
    echo ok >"$out/$name.status"
  elif ((rc == 0)); then
    echo "no summary.json in $out/$name" >"$out/$name.status"
  else
    echo "$(rc_text "$rc") after $(($(date +%s) - t0))s: $(why "$out/$name.log")" >"$out/$name.status"
  fi
}
torch_run() { # torch_run PRESET BATCH SEQ TIMEOUT
  local name="torch-$1" t0 rc
  rm -f "$out/$name.json"
  t0=$(date +%s)
  timeout -k 5 "$4" python3 "$here/py/torch_baseline.py" --config "$here/configs/$1/config.json" \
    --batch "$2" --seq "$3" --steps "$torch_steps" --warmup "$torch_warmup" \
    --out "$out/$name.json" >"$out/$name.log" 2>&1
  rc=$?
  if ((rc == 0)); then
    echo ok >"$out/$name.status"
  else
    echo "$(rc_text "$rc") after $(($(date +%s) - t0))s: $(tail -n1 "$out/$name.log")" >"$out/$name.status"
  fi
}
if [[ "${SKIP_TRAIN:-0}" != 1 ]]; then
  listed olmo-124m "$presets" && ours olmo-124m 64 1024 "${OURS_124M_TIMEOUT:-30}"
  listed olmo-1b "$presets" && ours olmo-1b 8 2048 "${OURS_1B_TIMEOUT:-70}"
  listed olmo-124m "$presets" && torch_run olmo-124m 64 1024 "${TORCH_124M_TIMEOUT:-70}"
  listed olmo-1b "$presets" && torch_run olmo-1b 8 2048 "${TORCH_1B_TIMEOUT:-100}"
  train_secs=$(($(date +%s) - start))
fi

# ---------------------------------------------------------------- kernel benches
bench_start=$(date +%s)
summaries=()
if [[ "${SKIP_BENCHES:-0}" != 1 ]]; then
  for b in "$here"/bin/benches/*; do
    [[ -x "$b" ]] || continue
    name="$(basename "$b")"
    [[ -n "${BENCHES:-}" ]] && ! listed "$name" "$BENCHES" && continue
    log="$out/bench-$name.log"
    left=$((bench_budget - ($(date +%s) - bench_start)))
    if ((left < 10)); then
      status=1
      summaries+=("== $name: not run, the ${bench_budget}s bench budget is spent")
      continue
    fi
    t0=$(date +%s)
    timeout -k 5 "$left" "$b" --bench "${bench_args[@]}" >"$log" 2>&1
    rc=$?
    secs=$(($(date +%s) - t0))
    if ((rc != 0)); then
      status=1
      tail -n 20 "$log" >&2
    fi
    summaries+=("== $name: $(rc_text "$rc"), ${secs}s (limit ${left}s), log $log")
    # The bench prints its own table after a line starting with "summary".
    summaries+=("$(sed -n '/^summary/,$p' "$log")")
  done
  if ((${#summaries[@]} == 0)); then
    summaries+=("== no bench staged under $here/bin/benches${BENCHES:+ named in BENCHES=$BENCHES}")
    status=1
  fi
fi

echo
echo "speed ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - start))s; logs in $out)"
if ((${#summaries[@]} > 0)); then
  printf '%s\n' "${summaries[@]}"
  echo
fi
if [[ "${SKIP_TRAIN:-0}" != 1 ]]; then
  for p in $presets; do
    if [[ -f "$out/ours-$p-profile.md" ]]; then
      echo "where ours' $p step goes (the 15 slowest ops; all of them in $out/ours-$p-profile.md):"
      head -n 19 "$out/ours-$p-profile.md"
      echo
    fi
  done
  echo "training step, ${train_secs}s (ours: $ours_steps steps, median of steps 3.. but the 2 profiled; torch: $torch_warmup warm-up + $torch_steps timed)"
  python3 - "$out" "$here/configs" "$presets" <<'PYEOF'
import json, os, sys

out, configs, presets = sys.argv[1], sys.argv[2], sys.argv[3].split()
rows = [r for r in (("olmo-124m", 64, 1024), ("olmo-1b", 8, 2048)) if r[0] in presets]
failed = False


def expected(preset, seq):
    """Parameter count and training FLOPs per token that config.json implies, counted as
    src/perf.rs counts them (the tied head once; exact causal attention)."""
    try:
        with open(os.path.join(configs, preset, "config.json")) as f:
            c = json.load(f)
        l, d, ff, v = c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    except (OSError, ValueError, KeyError):
        return None, None
    n = l * (4 * d * d + 3 * d * ff) + v * d
    return n, 6.0 * n + 6.0 * l * d * (seq + 1)


def load(impl, preset, seq):
    name = f"{impl}-{preset}"
    try:
        status = open(os.path.join(out, name + ".status")).read().strip()
    except OSError:
        status = "not run"
    res = None
    if status == "ok":
        try:
            with open(os.path.join(out, name + ".json")) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            status = f"unreadable {name}.json: {e}"
    if res is not None and impl == "torch" and not res.get("ok", False):
        status = f"{res.get('phase')}: {res.get('error_kind')}: {res.get('error', '')[:120]}"
        res = None
    if res is not None:
        for k in ("tokens_per_s", "step_ms_median", "mfu_989", "mfu_798"):
            if not isinstance(res.get(k), (int, float)):
                status, res = f"{name}.json: {k!r} missing or not a number", None
                break
    if res is not None:
        want_n, want_f = expected(preset, seq)
        got_f = res.get("flops_per_token")
        if want_n is not None and res.get("params") != want_n:
            status = f"not comparable: params {res.get('params')} but config.json implies {want_n}"
            res = None
        elif want_f is not None and not (isinstance(got_f, (int, float)) and abs(got_f - want_f) <= 1e-6 * want_f):
            status = f"not comparable: flops_per_token {got_f} but src/perf.rs's formula gives {want_f:.0f}"
            res = None
    return status, res


def gib(x):
    return f"{x / 2**30:.1f}" if isinstance(x, (int, float)) else "-"


# used GiB: device memory in use after the first step (total - free; ours: summary.json's
# peak_mem_bytes); alloc GiB: torch.cuda.max_memory_allocated() (tensors only), and for ours
# the buffers it allocates by src/perf.rs's count (summary.json's estimated_mem_bytes)
fmt = "{:<10} {:>9} {:<6} {:>9} {:>9} {:>7} {:>7} {:>9} {:>9}  {}"
print(fmt.format("model", "B x T", "impl", "tokens/s", "ms/step", "MFU989", "MFU798", "used GiB", "alloc GiB", "status"))
for preset, b, t in rows:
    got = {}
    for impl in ("ours", "torch"):
        status, r = load(impl, preset, t)
        got[impl] = r
        if r is None:
            failed = True
            print(fmt.format(preset, f"{b}x{t}", impl, "-", "-", "-", "-", "-", "-", "FAIL " + status))
        else:
            if impl == "ours":
                used, alloc = r.get("peak_mem_bytes"), r.get("estimated_mem_bytes")
            else:
                used, alloc = r.get("mem_used_after_first_step_bytes"), r.get("peak_mem_bytes")
            print(fmt.format(preset, f"{b}x{t}", impl, f"{r['tokens_per_s']:.0f}", f"{r['step_ms_median']:.1f}",
                             f"{100 * r['mfu_989']:.1f}%", f"{100 * r['mfu_798']:.1f}%",
                             gib(used), gib(alloc), "ok"))
    if got["ours"] and got["torch"]:
        ratio = got["ours"]["tokens_per_s"] / got["torch"]["tokens_per_s"]
        print(fmt.format(preset, f"{b}x{t}", "ratio", f"{ratio:.2f}x", "", "", "", "", "", "ours / torch, tokens/s"))
sys.exit(1 if failed else 0)
PYEOF
  rc=$?
  ((rc != 0)) && status=1
fi
exit "$status"
