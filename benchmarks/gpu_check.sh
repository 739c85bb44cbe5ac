#!/usr/bin/env bash
# vcmbench's GPU path against its CPU path, in at most 8 minutes on one H100 (issue 19, item 3).
#
#   VCMBENCH_SHARED=/path/to/shared benchmarks/gpu_check.sh [--dry-run] [OUT]
#
# Checks (benchmarks/gpu_check.py has the details; each prints a RESULT line and writes OUT/<check>.json):
#   yolo     YOLOv5n on coco-mini (reference + JPEG 10, 50), yolov5.device=cpu vs cuda: mAP within 0.002;
#            GPU busy = the model's bare forward time / the CUDA run's inference stage (target >= 0.8);
#            overhead ratio (wall / sum of job times) with background scoring off and on
#   learned  lic, objicm, tlicm, saicm: encoded on CUDA in one process, decoded on CUDA in a second and on the
#            CPU in a third: pixel-identical to the encoding process's own decode?
#   nerv     a NeRV encode (training, pruning, quantization, rANS) of an 8-frame 320x240 clip on CUDA; its
#            decode on CUDA vs on the CPU
# --dry-run: no GPU needed. Prints what the full run would check, checks the prerequisites, and runs every
# check on the CPU at a tiny size (3 images, one codec, 2 epochs) to show the script works; it checks nothing
# about CUDA. Exit status: 0 when every check ran, else the number of checks that failed to run
# (a check whose figures miss a target still exits 0: read its RESULT line).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python}
: "${VCMBENCH_SHARED:?set VCMBENCH_SHARED to the shared data folder (data/coco-mini, weights/yolov5n.pt)}"
for need in "$VCMBENCH_SHARED/data/coco-mini/val2017" "$VCMBENCH_SHARED/weights/yolov5n.pt"; do
    [ -e "$need" ] || { echo "missing $need"; exit 2; }
done
if [ "$DRY" = 1 ]; then
    echo "dry run (CPU, tiny sizes; no CUDA check). A GPU run would check, within 8 minutes:"
    sed -n '/^# Checks/,/^# --dry-run/p' "$0" | sed '$d' | sed 's/^#/ /'
    MODE=(--smoke); BUDGET=(240 240 240)
else
    if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device here: nothing checked (benchmarks/gpu_check.sh --dry-run runs the CPU smoke test)"
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    MODE=(--device cuda); BUDGET=(270 120 80)  # seconds: 470 in all, under the 8 minutes
fi
mkdir -p "$OUT"
failed=0
i=0
for check in yolo learned nerv; do
    start=$(date +%s)
    echo "== $check (at most ${BUDGET[$i]} s)"
    timeout "${BUDGET[$i]}" $PY benchmarks/gpu_check.py "$check" --out "$OUT" "${MODE[@]}" \
        || { echo "check $check did not finish (exit $?)"; failed=$((failed + 1)); }
    echo "   $check took $(( $(date +%s) - start )) s"
    i=$((i + 1))
done
exit "$failed"
