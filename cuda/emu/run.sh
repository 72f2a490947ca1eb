#!/usr/bin/env bash
# Compiles cuda/emu/check.cpp (the kernels of cuda/*.cu emulated on the host) and runs it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
g++ -std=c++20 -O1 -ffp-contract=off -w -pthread -I"$here" -include "$here/emu.h" \
  "$here/check.cpp" -o "$out/check"
"$out/check"
