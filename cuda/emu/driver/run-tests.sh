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
# EMU_ASAN=1 builds the kernels with AddressSanitizer as well (into target/emu-driver-asan): a
# kernel that reads or writes past the end of a device buffer (each allocation is exactly its
# requested size) or of a __shared__ array then aborts with the kernel's faulting line (the
# fiber's backtrace ends at emu.h's fiber_main, not at the launch) and the allocating call.
# CUDA threads still run as fibers: the default set took about 25 minutes on two busy cores
# (without the olmo-124m step), against about 7 without ASan, and found nothing.
# The harness binaries then run directly (not through cargo) with libasan preloaded, one after
# another; the exit status is non-zero if any of them fails.
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
if [[ "${EMU_ASAN:-0}" != 1 ]]; then
  cargo test --release "${harnesses[@]}" -- "${skip[@]}" "$@"
  exit
fi
# ASan: the runtime must be loaded first, so it is preloaded into the harnesses only (not into
# cargo and rustc). Leak checking is off: this hunts out-of-bounds accesses.
mapfile -t exes < <(cargo test --release --no-run --message-format=json "${harnesses[@]}" 2>/dev/null |
  grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
[[ ${#exes[@]} -gt 0 ]] || { echo "run-tests.sh: cargo listed no harness executables" >&2; exit 1; }
asan_lib="$(g++ -print-file-name=libasan.so)"
status=0
for exe in "${exes[@]}"; do
  echo "== $(basename "$exe") (AddressSanitizer)"
  LD_PRELOAD="$asan_lib${LD_PRELOAD:+:$LD_PRELOAD}" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
    "$exe" "${skip[@]}" "$@" || { echo "== $(basename "$exe"): FAILED (exit $?)"; status=1; }
done
exit $status
