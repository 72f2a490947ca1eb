#!/usr/bin/env bash
# Compiles each cuda/emu/check*.cpp (kernels of cuda/*.cu emulated on the host, each against a
# plain double-precision reference) and runs it. Exit status non-zero if any check fails.
# -fsanitize=alignment: a float4 / uint2 access through a pointer the type's alignment does not
# divide aborts the check (the host would silently allow what faults on the GPU), so the
# offset-by-one cases prove every vector path is guarded by its runtime alignment test.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for src in "$here"/check*.cpp; do
  name="$(basename "$src" .cpp)"
  echo "== $name"
  g++ -std=c++20 -O1 -ffp-contract=off -w -pthread -fsanitize=alignment -fno-sanitize-recover=alignment -I"$here" -include "$here/emu.h" \
    "$src" -o "$out/$name"
  "$out/$name" || status=1
done
exit $status
