#!/usr/bin/env bash
# Recomposes the demo data that baddata ships in assets/demo/composed/ (clean/toxic/val texts,
# the probe set, the 2,048-id BPE and composition.json) from the corpora in assets/demo/, with
# tools/compose_demo (see docs/shards.md). Deterministic: on an unchanged tree it rewrites the
# same contents. About 20 s in a release build, plus the build.
#
# Usage: bash tools/compose-demo.sh           rewrite assets/demo/composed/
#        bash tools/compose-demo.sh --check   recompose into a temporary directory and compare
#                                             with the shipped files (the ignored test
#                                             shipped_assets_are_what_the_composer_writes)
#
# The RealToxicityPrompts prompts (assets/rtp/) come from tools/extract_rtp.py instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
case "${1:-}" in
  "") cargo run --release --example compose_demo ;;
  --check) cargo test --release --example compose_demo -- --ignored --nocapture ;;
  *) echo "usage: bash tools/compose-demo.sh [--check]" >&2; exit 2 ;;
esac
