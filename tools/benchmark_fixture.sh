#!/usr/bin/env bash
# Records what the independent Python reference (tools/benchmark_reference.py) computes on the
# benchmark test fixtures, for tests/benchmark.rs to compare baddata's scorer against:
#   tests/fixtures/benchmark/reference-0shot.json   every fixture set, zero-shot
#   tests/fixtures/benchmark/reference-2shot.json   every fixture set, 2-shot, few-shot seed 5
# For the 2-shot file, which examples each item gets is baddata's seeded draw (MMLU's are its
# first two dev questions, as in the harness), so `evaluate` runs first to say which; the
# reference formats and scores them itself.
#
# Needs python3 with numpy and tokenizers 0.22.2; PYTHON names the interpreter (default python3):
#   python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy tokenizers==0.22.2
#   PYTHON=/tmp/venv/bin/python bash tools/benchmark_fixture.sh
# After a change of the fixture model (cargo run --release --example benchmark_fixture --
# tests/fixtures/benchmark/model), rerun this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FIX=tests/fixtures/benchmark
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --release --bin evaluate
./target/release/evaluate --benchmark all --checkpoint "$FIX/model" --benchmark-dir "$FIX" \
    --shots 2 --seed 5 --device cpu --quiet --out "$tmp/2shot"
"$PY" tools/benchmark_reference.py --checkpoint "$FIX/model" --benchmark-dir "$FIX" \
    --benchmarks all --out "$FIX/reference-0shot.json"
"$PY" tools/benchmark_reference.py --checkpoint "$FIX/model" --benchmark-dir "$FIX" \
    --benchmarks all --shots 2 --fewshot-from "$tmp/2shot" --out "$FIX/reference-2shot.json"
