#!/usr/bin/env bash
# Compiles each cuda/emu/check*.cpp (kernels of cuda/*.cu emulated on the host, each against a
# plain double-precision reference) and runs it. Exit status non-zero if any check fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for src in "$here"/check*.cpp; do
  name="$(basename "$src" .cpp)"
  echo "== $name"
  g++ -std=c++20 -O1 -ffp-contract=off -w -pthread -I"$here" -include "$here/emu.h" \
    "$src" -o "$out/$name"
  "$out/$name" || status=1
done
exit $status
