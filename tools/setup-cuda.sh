#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler (nvcc, headers, libdevice) from PyPI into .cuda/venv, so that the
# kernels in cuda/ compile on a machine without a GPU or a system CUDA toolkit. build.rs finds the
# result on its own (.cuda/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc).
#
# Idempotent: when the pinned versions are already installed and nvcc runs, it exits at once.
# Usage: tools/setup-cuda.sh            (from anywhere; installs next to this repository's Cargo.toml)
#        PYTHON=python3.12 tools/setup-cuda.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.cuda/venv"
python="${PYTHON:-python3}"

# All five pinned: an unpinned nvvm pulls a newer release than the driver on the GPU machine.
pkgs=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-nvvm==13.0.88"
)
stamp="$venv/.baddata-cuda-pins"
want="$(printf '%s\n' "${pkgs[@]}")"

find_nvcc() {
  local c
  for c in "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
    [[ -x "$c" ]] && { echo "$c"; return 0; }
  done
  return 1
}

# Compiles a tiny kernel to prove that nvcc finds its headers (crt, cccl, cuda_runtime) and
# cicc/libdevice (nvvm): `nvcc --version` alone passes even when those are missing.
smoke_test() {
  local nvcc="$1" tmp
  tmp="$(mktemp -d)"
  cat >"$tmp/smoke.cu" <<'CU'
#include <cuda_bf16.h>
extern "C" __global__ void smoke(float* x, __nv_bfloat16* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) { x[i] = sqrtf(x[i]) / 3.0f; y[i] = __float2bfloat16_rn(x[i]); }
}
CU
  if ! "$nvcc" -fatbin -gencode arch=compute_90,code=sm_90 -o "$tmp/smoke.fatbin" "$tmp/smoke.cu" \
      >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$tmp"
}

if nvcc="$(find_nvcc)" && [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$nvcc" --version >/dev/null 2>&1; then
  echo "setup-cuda: already installed: $nvcc"
  exit 0
fi

echo "setup-cuda: installing CUDA 13.0 compiler packages into $venv"
if [[ ! -x "$venv/bin/python" ]]; then
  mkdir -p "$root/.cuda"
  if ! "$python" -m venv "$venv"; then
    # Debian's python3 needs python3-venv for ensurepip.
    if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
      rm -rf "$venv"
      apt-get update -qq && apt-get install -y -qq python3-venv
      "$python" -m venv "$venv"
    else
      echo "setup-cuda: '$python -m venv' failed; install python3-venv" >&2
      exit 1
    fi
  fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}"

nvcc="$(find_nvcc)" || { echo "setup-cuda: nvcc not found under $venv after install" >&2; exit 1; }
"$nvcc" --version | tail -n 2
if ! smoke_test "$nvcc"; then
  echo "setup-cuda: nvcc runs but cannot compile a kernel (see above)" >&2
  exit 1
fi
printf '%s\n' "${pkgs[@]}" >"$stamp"
# A build made before this install compiled CPU-only; make cargo rerun build.rs to find nvcc.
touch "$root/build.rs"
echo "setup-cuda: nvcc at $nvcc"
