#!/usr/bin/env bash
# Builds what the GPU machine runs and stages it into one small, self-contained folder.
#
# The GPU machine has a CUDA driver but no Rust toolchain, so this script (run here) builds the
# release GPU test harnesses (test targets named gpu*) and the benches with the kernels compiled
# in (BADDATA_REQUIRE_CUDA=1), strips them, and copies them with the scripts that run there:
#
#   .gpu-stage/
#     correctness.sh   every GPU test and parity check; short table last; non-zero on failure
#     speed.sh         kernel benches with short criterion settings; table last
#     bin/tests/*      stripped test harnesses (need only libc and, at run time, libcuda)
#     bin/benches/*    stripped bench binaries
#     hf/              tools/hf_parity.py when present (run by correctness.sh)
#     MANIFEST.txt     commit, date, toolchain versions, file sizes
#
# Then copy the folder to the GPU machine and run `bash correctness.sh` and `bash speed.sh`
# there (logs go to $OUT, default ./gpu-out).
#
# Environment: STAGE=dir (default .gpu-stage), GPU_TESTS="gpu other" (test targets to stage;
# default: every integration test whose name starts with gpu).
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
  if [[ "$kind" == "bench" ]]; then
    strip -o "$stage/bin/benches/$name" "$exe"
    n_benches=$((n_benches + 1))
  fi
done <<<"$benches"
if ((n_tests == 0)); then
  echo "gpu-check: no test harness staged (GPU_TESTS=${GPU_TESTS:-gpu*})" >&2
  exit 1
fi

cp tools/gpu/correctness.sh tools/gpu/speed.sh "$stage/"
chmod +x "$stage"/*.sh
# Hugging Face parity fixture: a checkpoint written by `train` (a short demo run) and the logits
# this engine computes for it; hf/hf_parity.py compares them with transformers' OlmoForCausalLM.
echo "gpu-check: training a short demo run for the Hugging Face parity check"
work="$root/target/gpu-check-work"
rm -rf "$work/hfrun"
cargo run --release --quiet --bin train -- --quiet --device cpu --steps 30 --save-every 30 --out "$work/hfrun"
mkdir -p "$stage/hf/checkpoint"
ck="$work/hfrun/$(cat "$work/hfrun/latest")"
cp "$ck/model.safetensors" "$ck/config.json" "$stage/hf/checkpoint/"
[[ -f "$ck/tokenizer.json" ]] && cp "$ck/tokenizer.json" "$stage/hf/checkpoint/"
cargo run --release --quiet --example dump_logits -- "$ck" "$stage/hf/logits.safetensors" 2 128
cp tools/hf_parity.py "$stage/hf/"

nvcc="$(ls .cuda/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1 || true)"
{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -sm), $(ldd --version 2>/dev/null | head -n1)"
  echo "rustc: $(rustc --version)"
  echo "nvcc: ${NVCC:-$nvcc} ($("${NVCC:-$nvcc}" --version 2>/dev/null | tail -n1))"
  echo "files:"
  (cd "$stage" && find . -type f ! -name MANIFEST.txt -printf '  %p %s bytes\n' | sort)
} >"$stage/MANIFEST.txt"

echo "gpu-check: staged $n_tests test harness(es) and $n_benches bench(es) in $stage ($(du -sh "$stage" | cut -f1))"
cat "$stage/MANIFEST.txt"
