#!/usr/bin/env bash
# Runs the GPU test harnesses (tests/gpu*.rs) on the emulated driver: the unchanged CUDA executor
# and launchers, every kernel executed on the host by cuda/emu. What this proves and what it
# does not: cuda/emu/driver/driver.cpp's header. It is not a GPU run; docs/gpu-results.md records
# only those.
#
# Usage: cuda/emu/driver/run-tests.sh [--all] [extra libtest arguments]
#   default  every harness (about 7 minutes on two cores; the olmo-124m step takes 2 of them),
#            without the tests whose shapes take the host far too long: the 3.3e9-element
#            wide-index head, and the matmuls at OLMo-1B's qkv shape (which also make the
#            bit-identity test: on the host it proves nothing, the emulator's schedule being
#            fixed)
#   --all    those too (an hour or more on two cores)
# EMU_ASAN=1 builds the kernels with AddressSanitizer as well: a kernel that reads or writes
# past the end of a device buffer then aborts with the faulting line (slow: CUDA threads run as
# OS threads then; pick tests with a filter, e.g. `EMU_ASAN=1 run-tests.sh step_tiny`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$root"
out="$root/target/emu-driver${EMU_ASAN:+-asan}"
[[ "${EMU_ASAN:-0}" == 1 ]] || out="$root/target/emu-driver"
skip=(--skip olmo_124m_head_at_65536_rows_matches_cpu
      --skip matmul_olmo_1b_qkv_matches_cpu --skip matmul_two_launches_bit_identical)
if [[ "${1:-}" == "--all" ]]; then
  skip=()
  shift
fi
bash cuda/emu/driver/build.sh "$out"
harnesses=()
for f in tests/gpu*.rs; do harnesses+=(--test "$(basename "$f" .rs)"); done
cargo test --release --no-run "${harnesses[@]}" 2>&1 | grep -v '^ *Executable' || true
export LD_LIBRARY_PATH="$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# An ignored test would mean the harness did not find the emulated device: make that a failure.
export BADDATA_GPU_REQUIRED=1
if [[ "${EMU_ASAN:-0}" == 1 ]]; then
  export LD_PRELOAD="$(g++ -print-file-name=libasan.so)"
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
fi
cargo test --release "${harnesses[@]}" -- "${skip[@]}" "$@"
