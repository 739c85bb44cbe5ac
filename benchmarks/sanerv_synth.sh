#!/usr/bin/env bash
# SA-NeRV vs NeRV on the synth clips, scored per clip by the synth detector (a table like Table 1 of the
# SA-NeRV paper), with VVenC (random access) beside them. CPU: one rate point per codec and clip, NeRV-S at
# width 1/2 (371k parameters before pruning, 40 % pruned, 8 bits), the card's 100 + 20 epochs: ~20 min of one
# core per encode; the two clips' encodes run in parallel (41.5 min wall on 2 cores, docs/sanerv_synth_report.md).
# The card's own ladder (widths 1/8-1/4) is too small for the detector to find anything in its output.
#   bash benchmarks/sanerv_synth.sh [OUT] [RATE_POINT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/sanerv-synth}"
rp="${2:-[{size: S, width: 0.5, prune: 0.4, bits: 8}]}"
vcmbench run --codec nerv,sanerv,vvenc --task synth_det --dataset synth_clips \
  --quality nerv=1 --quality sanerv=1 --quality vvenc=32,37,42,47 \
  --set "nerv.rate_points=$rp" --set "sanerv.rate_points=$rp" \
  --set nerv.progress=false --set sanerv.progress=false --out "$out" --no-progress
vcmbench report "$out" --anchor vvenc --metric map,map50
