#!/usr/bin/env bash
# Regression gate: a small JPEG + VVenC x YOLOv5n grid on 20 coco-mini images, compared with the
# committed baseline. Regenerate the baseline (after an intended change) with:
#   bash benchmarks/ci_regression.sh --update-baseline
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VCMBENCH_SHARED:?set VCMBENCH_SHARED to the shared data folder}"
out="${VCMBENCH_CI_OUT:-$(mktemp -d)}"
baseline=results/baselines/coco-mini20-yolov5n.csv

vcmbench run --codec jpeg,vvenc --task yolov5 --dataset coco \
  --data-root "$VCMBENCH_SHARED/data/coco-mini" --limit 20 \
  --set "yolov5.weights=$VCMBENCH_SHARED/weights/yolov5n.pt" \
  --quality jpeg=10,20,40,70 --quality vvenc=27,32,37,42 --set vvenc.preset=faster \
  --out "$out" --no-progress

if [ "${1:-}" = "--update-baseline" ]; then
  cp "$(ls -td "$out"/runs/*/ | head -1)results.csv" "$baseline"
  echo "baseline updated: $baseline"
  exit 0
fi
vcmbench compare "$baseline" "$out" --fail bd_rate:+1.0 --fail map:-0.01 --fail map50:-0.01
