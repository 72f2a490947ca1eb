#!/usr/bin/env bash
# Builds what the GPU machine runs and stages it into one small, self-contained folder.
#
# The GPU machine has a CUDA driver but no Rust toolchain, so this script (run here) builds the
# release GPU test harnesses (test targets named gpu*), the GPU benches (every bench but the
# CPU-only cpu*), `train` and the `dump_logits` example with the kernels compiled in
# (BADDATA_REQUIRE_CUDA=1), strips them, computes here what the GPU results are checked against,
# and copies all of it with the scripts that run there:
#
#   .gpu-stage/
#     correctness.sh      every GPU test and parity check (under 4 minutes); short table last
#     speed.sh            training throughput (ours and PyTorch) and kernel benches (under 6
#                         minutes); table last
#     bin.tar.xz          the binaries below, as one xz archive (unpacked there by unpack.sh)
#       bin/tests/*       stripped test harnesses (need only libc and, at run time, libcuda)
#       bin/benches/*     stripped bench binaries
#       bin/train         stripped `train`
#       bin/dump_logits   stripped example: a checkpoint's logits for hf_parity.py
#     demo/demo-data/     the demo's prepared data (tokenizer, shards, manifest), so that the GPU
#                         run trains on exactly the tokens the CPU reference did
#     demo/args           the `train` arguments of the reference run (the GPU run adds
#                         --device cuda and --out)
#     demo/cpu/log.jsonl  the CPU reference curve: 50 demo steps, fp32 on the CPU
#     configs/P/config.json   Hugging Face configs of olmo-124m and olmo-1b (torch baseline)
#     py/                 compare_curves.py, torch_baseline.py
#     hf/hf_parity.py     transformers' OlmoForCausalLM vs this engine on a checkpoint of the GPU
#                         run (the demo reference's checkpoint is not staged: it would double the
#                         folder's size)
#     MANIFEST.txt        commit, date, toolchain versions, file sizes
#
# Then copy the folder to the GPU machine and run `bash correctness.sh` and `bash speed.sh`
# there (logs go to $OUT, default ./gpu-out).
#
# Environment: STAGE=dir (default .gpu-stage), GPU_TESTS="gpu other" (test targets to stage;
# default: every integration test whose name starts with gpu), STAGE_MAX_MIB (default 64: the
# stage must stay small enough to copy quickly; larger is an error).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
stage="${STAGE:-$root/.gpu-stage}"

tools/setup-cuda.sh
export BADDATA_REQUIRE_CUDA=1

# Prints "kind<TAB>name<TAB>executable" for each built executable in cargo's JSON messages.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        print("%s\t%s\t%s" % (t["kind"][0], t["name"], m["executable"]))
'
}

echo "gpu-check: building test harnesses"
tests="$(cargo test --release --no-run --message-format=json | executables)"
echo "gpu-check: building benches"
benches="$(cargo bench --no-run --message-format=json | executables)"
echo "gpu-check: building train and the examples"
bins="$(cargo build --release --bin train --example dump_logits --example preset_config --message-format=json | executables)"

# Path of the executable cargo reported for target kind $1 and name $2.
exe_of() {
  awk -F'\t' -v k="$1" -v n="$2" '$1 == k && $2 == n { print $3 }' <<<"$bins" | tail -n1
}
train_exe="$(exe_of bin train)"
dump_exe="$(exe_of example dump_logits)"
config_exe="$(exe_of example preset_config)"
for e in "$train_exe" "$dump_exe" "$config_exe"; do
  [[ -n "$e" && -x "$e" ]] || { echo "gpu-check: cargo reported no executable for train/dump_logits/preset_config" >&2; exit 1; }
done

rm -rf "$stage"
mkdir -p "$stage/bin/tests" "$stage/bin/benches"

wanted_test() {
  local name="$1" w
  if [[ -n "${GPU_TESTS:-}" ]]; then
    for w in $GPU_TESTS; do [[ "$w" == "$name" ]] && return 0; done
    return 1
  fi
  [[ "$name" == gpu* ]]
}

n_tests=0
while IFS=$'\t' read -r kind name exe; do
  [[ -z "${kind:-}" ]] && continue
  if [[ "$kind" == "test" ]] && wanted_test "$name"; then
    strip -o "$stage/bin/tests/$name" "$exe"
    n_tests=$((n_tests + 1))
  fi
done <<<"$tests"
n_benches=0
while IFS=$'\t' read -r kind name exe; do
  [[ -z "${kind:-}" ]] && continue
  # cpu* benches measure the CPU executor: not what the GPU machine's time is for
  if [[ "$kind" == "bench" && "$name" != cpu* ]]; then
    strip -o "$stage/bin/benches/$name" "$exe"
    n_benches=$((n_benches + 1))
  fi
done <<<"$benches"
if ((n_tests == 0)); then
  echo "gpu-check: no test harness staged (GPU_TESTS=${GPU_TESTS:-gpu*})" >&2
  exit 1
fi
strip -o "$stage/bin/train" "$train_exe"
strip -o "$stage/bin/dump_logits" "$dump_exe"

cp tools/gpu/correctness.sh tools/gpu/speed.sh tools/gpu/unpack.sh "$stage/"
chmod +x "$stage"/*.sh
mkdir -p "$stage/py" "$stage/hf" "$stage/demo/cpu" "$stage/configs"
cp tools/compare_curves.py tools/torch_baseline.py "$stage/py/"
cp tools/hf_parity.py "$stage/hf/"

# The CPU reference curve: 50 steps of the demo (tiny preset, demo data and defaults), fp32 on
# the CPU. `train` keeps the demo's prepared data in ./runs/demo-data of its working directory:
# the reference runs in $work, and that data is staged so the GPU run (started in a directory
# where runs/demo-data is the staged copy) reads the very same tokenizer and shards. Validation
# only at the first step and after the last (--eval-every larger than --steps).
work="$root/target/gpu-check-work"
rm -rf "$work/cpu-demo"
mkdir -p "$work"
demo_args="--steps 50 --eval-every 1000 --quiet"
echo "gpu-check: CPU reference run: train $demo_args"
t0=$(date +%s)
# shellcheck disable=SC2086 # demo_args is a list of words
(cd "$work" && "$train_exe" --device cpu $demo_args --out "$work/cpu-demo")
echo "gpu-check: CPU reference run took $(($(date +%s) - t0)) s"
[[ "$(wc -l <"$work/cpu-demo/log.jsonl")" -eq 50 ]] || { echo "gpu-check: $work/cpu-demo/log.jsonl should have 50 lines" >&2; exit 1; }
echo "$demo_args" >"$stage/demo/args"
cp "$work/cpu-demo/log.jsonl" "$stage/demo/cpu/log.jsonl"
mkdir -p "$stage/demo/demo-data"
for f in manifest.json tokenizer.json clean.shard toxic.shard val.shard probe.jsonl; do
  cp "$work/runs/demo-data/$f" "$stage/demo/demo-data/"
done

# Configs for the PyTorch baseline (the config.json a checkpoint of each preset carries).
for p in olmo-124m olmo-1b; do
  "$config_exe" "$p" "$stage/configs/$p/config.json"
done

nvcc="$(find .cuda/venv/lib -path '*/site-packages/nvidia/cu13/bin/nvcc' 2>/dev/null | head -n1 || true)"
{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -sm), $(ldd --version 2>/dev/null | head -n1)"
  echo "rustc: $(rustc --version)"
  echo "nvcc: ${NVCC:-$nvcc} ($("${NVCC:-$nvcc}" --version 2>/dev/null | tail -n1))"
  echo "demo reference: train --device cpu $demo_args"
  echo "files:"
  (cd "$stage" && find . -type f ! -name MANIFEST.txt -printf '  %p %s bytes\n' | sort)
} >"$stage/MANIFEST.txt"

# The binaries share most of their bytes (the crate and the embedded kernels): carry them as one
# xz archive; correctness.sh and speed.sh unpack it (tools/gpu/unpack.sh).
tar -C "$stage" -cf - bin | xz -6 -T2 >"$stage/bin.tar.xz"
rm -rf "${stage:?}/bin"

size_kib="$(du -sk "$stage" | cut -f1)"
max_mib="${STAGE_MAX_MIB:-64}"
echo "gpu-check: staged $n_tests test harness(es), $n_benches bench(es), train, dump_logits, the demo reference and the configs in $stage ($((size_kib / 1024)) MiB)"
cat "$stage/MANIFEST.txt"
if ((size_kib > max_mib * 1024)); then
  echo "gpu-check: the stage is $((size_kib / 1024)) MiB, over STAGE_MAX_MIB=$max_mib: stage fewer tests (GPU_TESTS) or shrink them" >&2
  exit 1
fi
