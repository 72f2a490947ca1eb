#!/usr/bin/env bash
# Builds the emulated CUDA driver (driver.cpp + every cuda/*.cu compiled for the host through
# cuda/emu, one translation unit per kernel file) into OUT_DIR/libcuda.so.1, with libcuda.so
# beside it. Put OUT_DIR first on LD_LIBRARY_PATH to run the CUDA executor on the host:
#
#   cuda/emu/driver/build.sh target/emu-driver
#   LD_LIBRARY_PATH=target/emu-driver cargo test --release --test gpu_step -- tiny
#
# Objects are rebuilt only when their sources changed (make-style timestamps, by hand).
# EMU_ASAN=1 adds AddressSanitizer (use a separate OUT_DIR; the library then needs libasan
# preloaded: run-tests.sh does that). CUDA threads still run as fibers: emu.h announces every
# stack switch to ASan.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
emu="$(dirname "$here")"
cuda="$(dirname "$emu")"
out="${1:?usage: build.sh OUT_DIR}"
mkdir -p "$out/obj"
out="$(cd "$out" && pwd)"

# -O2: whole training steps run through these kernels. -fsanitize=alignment: a float4 access
# through a misaligned pointer (a buffer view at an odd offset) aborts, as it faults on the GPU.
flags=(-std=c++20 -O2 -fPIC -ffp-contract=off -w -pthread -fsanitize=alignment
       -fno-sanitize-recover=alignment -I"$emu")
link=(-fsanitize=alignment)
if [[ "${EMU_ASAN:-0}" == 1 ]]; then
  flags+=(-fsanitize=address -fno-omit-frame-pointer -g)
  link+=(-fsanitize=address)
fi
objs=()
for src in "$here"/m_*.cpp "$here"/driver.cpp; do
  name="$(basename "$src" .cpp)"
  obj="$out/obj/$name.o"
  deps=("$src" "$here"/*.h "$emu"/*.h)
  if [[ "$name" == m_* ]]; then
    deps+=("$cuda/${name#m_}.cu" "$cuda"/*.cuh)
    extra=(-include "$emu/emu.h")
  else
    extra=()
  fi
  stale=0
  [[ -f "$obj" ]] || stale=1
  for d in "${deps[@]}"; do [[ "$d" -nt "$obj" ]] && stale=1; done
  if [[ $stale == 1 ]]; then
    echo "cuda/emu/driver: compiling $name"
    g++ "${flags[@]}" "${extra[@]}" -c "$src" -o "$obj"
  fi
  objs+=("$obj")
done
g++ -shared -pthread "${link[@]}" -o "$out/libcuda.so.1" -Wl,-soname,libcuda.so.1 "${objs[@]}"
ln -sf libcuda.so.1 "$out/libcuda.so"
echo "cuda/emu/driver: built $out/libcuda.so.1"
