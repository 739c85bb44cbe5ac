#!/usr/bin/env bash
# SA-NeRV vs NeRV on the synth clips, scored per clip by the synth detector (a table like Table 1 of the
# SA-NeRV paper), with VVenC (random access) beside them. CPU: one rate point of each NeRV codec per clip
# (~7-8 min of one core per encode with the card recipe); the encodes of the two clips run in parallel.
#   bash benchmarks/sanerv_synth.sh [RATE_POINT] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
q="${1:-2}"
out="${2:-results/sanerv-synth}"
vcmbench run --codec nerv,sanerv,vvenc --task synth_det --dataset synth_clips \
  --quality "nerv=$q" --quality "sanerv=$q" --quality vvenc=32,37,42,47 \
  --set nerv.progress=false --set sanerv.progress=false --out "$out" --no-progress
vcmbench report "$out" --anchor vvenc --metric map,map50
