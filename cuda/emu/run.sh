#!/usr/bin/env bash
# Compiles each cuda/emu/check*.cpp (kernels of cuda/*.cu emulated on the host, each against a
# plain double-precision reference) and runs it. Exit status non-zero if any check fails.
# -fsanitize=alignment: a float4 / uint2 access through a pointer the type's alignment does not
# divide aborts the check (the host would silently allow what faults on the GPU), so the
# offset-by-one cases prove every vector path is guarded by its runtime alignment test.
#
# Every check runs in emu.h's fiber mode twice: threads resumed in ascending order, then with
# EMU_FIBER_ORDER=reverse (descending), so a missing barrier shows whichever way round the
# reader and the writer are. check_matmul (whose kernels use cp.async) runs twice more with
# EMU_CP_ASYNC=eager, copies landing as soon as they are issued instead of at the wait that
# covers them, so a shared buffer refilled while others still read it fails too (emu.h).
# check_emu.cpp tests the emulator itself, including two kernels
# that must abort (a deadlocked block, a nested launch, a misaligned float4). `run.sh --os-threads` also builds
# and runs every check with -DEMU_OS_THREADS (one std::thread per CUDA thread, the OS's
# interleaving); that adds more than a minute on two cores, most of it thread switches, so it
# is not part of the default run. `run.sh --asan` also builds every check with AddressSanitizer
# (fiber mode: emu.h announces each stack switch to it) and runs it once, ascending order, so an
# out-of-bounds access to a buffer, a __shared__ array or a local array aborts the check; that
# adds about 25 s on two cores.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
os_threads=0
asan=0
for arg in "$@"; do
  case "$arg" in
    --os-threads) os_threads=1 ;;
    --asan) asan=1 ;;
    *) echo "usage: $0 [--os-threads] [--asan]" >&2; exit 2 ;;
  esac
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-std=c++20 -O1 -ffp-contract=off -w -pthread -fsanitize=alignment -fno-sanitize-recover=alignment
       -I"$here" -include "$here/emu.h")
status=0
# must_abort BINARY ARG PATTERN: BINARY ARG must exit non-zero with PATTERN in its stderr.
must_abort() {
  # (in a subshell whose stderr is dropped: bash's own "Aborted" notice is expected noise)
  if ( "$1" "$2" >"$out/stdout" 2>"$out/stderr"; exit $? ) 2>/dev/null; then
    echo "$(basename "$1") $2: finished, but must abort FAIL"; status=1
  elif grep -q "$3" "$out/stderr"; then
    echo "$(basename "$1") $2: aborted with \"$3\" ok"
  else
    echo "$(basename "$1") $2: aborted without \"$3\" FAIL"; cat "$out/stderr"; status=1
  fi
}
for src in "$here"/check*.cpp; do
  name="$(basename "$src" .cpp)"
  g++ "${flags[@]}" "$src" -o "$out/$name"
  echo "== $name (fibers, ascending order)"
  "$out/$name" || status=1
  echo "== $name (fibers, EMU_FIBER_ORDER=reverse)"
  EMU_FIBER_ORDER=reverse "$out/$name" || status=1
  if [ "$name" = check_matmul ]; then  # the checks of kernels that use cp.async
    # copies that land as soon as they are issued (see emu.h): a stage refilled too early fails
    echo "== $name (fibers, EMU_CP_ASYNC=eager, both orders)"
    EMU_CP_ASYNC=eager "$out/$name" || status=1
    EMU_CP_ASYNC=eager EMU_FIBER_ORDER=reverse "$out/$name" || status=1
  fi
  if [ "$name" = check_emu ]; then
    must_abort "$out/$name" deadlock "emu: deadlock in the kernel launched at"
    must_abort "$out/$name" nested "from inside a kernel"
    must_abort "$out/$name" misaligned "misaligned address"
  fi
  if [ "$asan" = 1 ]; then
    g++ "${flags[@]}" -fsanitize=address -fno-omit-frame-pointer -g "$src" -o "$out/$name-asan"
    echo "== $name (fibers, AddressSanitizer)"
    ASAN_OPTIONS="abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" "$out/$name-asan" || status=1
    if [ "$name" = check_emu ]; then
      must_abort "$out/$name-asan" deadlock "emu: deadlock in the kernel launched at"
      must_abort "$out/$name-asan" misaligned "misaligned address"
    fi
  fi
  if [ "$os_threads" = 1 ]; then
    g++ "${flags[@]}" -DEMU_OS_THREADS "$src" -o "$out/$name-os"
    echo "== $name (EMU_OS_THREADS)"
    "$out/$name-os" || status=1
    if [ "$name" = check_emu ]; then
      must_abort "$out/$name-os" nested "from inside a kernel"
      must_abort "$out/$name-os" misaligned "misaligned address"
    fi
  fi
done
exit $status
