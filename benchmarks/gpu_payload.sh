#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a lent GPU machine (the `device` tool), prepared here.
#
# That machine reaches no package index, has Python 3.12 with PyTorch but not vcmbench's other
# dependencies, and receives only this checkout's working tree: tracked files, untracked files git does not
# ignore, and the ignored paths a call names in `carry`, 64 MiB in all. The tracked files alone are about
# 63 MiB (mostly weights/), so the wheels and the data do not fit beside them as they are.
#
#   VCMBENCH_SHARED=/path/to/shared benchmarks/gpu_payload.sh prepare [PYVER]
#       .gpu/whl: wheels for PYVER (default 3.12) of the packages the device image lacks, at the versions of
#       .ci/constraints.txt; .gpu/shared: coco-mini (images, annotations) and yolov5n.pt, laid out like
#       ../shared. .gpu/ is git-ignored: a call takes it with carry [".gpu"].
#   benchmarks/gpu_payload.sh slim
#       untrack the tracked files no check reads (the synth models; every learned checkpoint but the one each
#       learned codec's lowest rate point uses, the one gpu_check.py codes with), and ignore them through
#       .git/info/exclude: they stay on disk and leave the travelling tree.
#   benchmarks/gpu_payload.sh size       what a call carrying .gpu would send, against 64 MiB
#   benchmarks/gpu_payload.sh command    the command line for the device call (carry [".gpu"], timeout_s 540)
#   benchmarks/gpu_payload.sh restore    undo slim (the files are tracked again, nothing is left excluded), and
#       delete .gpu: the copy of the shared data lives in the checkout only for the call
#
# Run it with the project's environment active: slim reads the learned codecs' cards (PYTHON, default python).
# A session that stops between slim and restore leaves staged deletions: `benchmarks/gpu_payload.sh restore`
# (or `git reset -q` and removing the marked lines of .git/info/exclude) undoes them.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=$((64 * 1024 * 1024))
MARK_BEGIN="# >>> gpu_payload.sh slim"
MARK_END="# <<< gpu_payload.sh slim"
EXCLUDE=.git/info/exclude
# the packages gpu_check.py imports that the device image does not hold (the device tool's KINDS.md,
# "Python packages already there"); setuptools for pkg_resources, which yolov5 imports and setuptools 81 drops
PACKAGES="compressai faster-coco-eval pycocotools pytorch-msssim ultralytics ultralytics-thop yolov5 setuptools"
PY=${PYTHON:-python}

pinned() {  # NAME==VERSION from .ci/constraints.txt
    local line
    line=$(grep -i -E "^$1==" .ci/constraints.txt) || { echo "gpu_payload: $1 is not pinned in .ci/constraints.txt" >&2; exit 2; }
    echo "$line"
}

prepare() {
    local pyver=${1:-3.12}
    : "${VCMBENCH_SHARED:?set VCMBENCH_SHARED to the shared data folder (data/coco-mini, weights/yolov5n.pt)}"
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/shared/data/coco-mini .gpu/shared/weights
    local specs=()
    for p in $PACKAGES; do specs+=("$(pinned "$p")"); done
    local plat=()
    for n in 17 27 28 31 34 35; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
    # one download per package: pip matches each --platform exactly, and a pure-Python wheel matches any
    for spec in "${specs[@]}"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
            "${plat[@]}" --platform manylinux2014_x86_64 -d .gpu/whl "$spec"
    done
    cp -r "$VCMBENCH_SHARED/data/coco-mini/val2017" "$VCMBENCH_SHARED/data/coco-mini/annotations" .gpu/shared/data/coco-mini/
    cp "$VCMBENCH_SHARED/weights/yolov5n.pt" .gpu/shared/weights/
    echo "prepared .gpu: $(ls .gpu/whl | wc -l) wheels ($(du -sh .gpu/whl | cut -f1)), data $(du -sh .gpu/shared | cut -f1)"
    size || true
}

unneeded() {  # tracked files no check of gpu_check.py reads
    "$PY" - <<'EOF'
import subprocess
import sys
from pathlib import Path

from vcmbench.cards import CardSet

sys.path.insert(0, "benchmarks")
from gpu_check import LEARNED  # noqa: E402  (the learned codecs the check codes with)

keep = set()
for name in LEARNED:  # each at its lowest rate point, as gpu_check.py's learned check codes
    card = CardSet().get("codec", name)
    point = card.settings["rate_points"][min(card.qualities)]
    keep.add(str(Path(point["checkpoint"])))
tracked = subprocess.run(["git", "ls-files", "weights"], capture_output=True, text=True, check=True).stdout.split()
missing = keep - set(tracked)
if missing:
    raise SystemExit(f"gpu_payload: the learned checkpoints {sorted(missing)} are not tracked files")
for path in tracked:
    if path.startswith(("weights/synth/", "weights/learned/")) and path.endswith((".pt", ".pt.xz")) and path not in keep:
        print(path)
EOF
}

slim() {
    if grep -qF "$MARK_BEGIN" "$EXCLUDE" 2>/dev/null; then echo "gpu_payload: already slim (restore first)" >&2; exit 2; fi
    mapfile -t files < <(unneeded)
    [ "${#files[@]}" -gt 0 ] || { echo "gpu_payload: nothing to leave out" >&2; exit 2; }
    { echo "$MARK_BEGIN"; printf '/%s\n' "${files[@]}"; echo "$MARK_END"; } >> "$EXCLUDE"
    git rm -q --cached -- "${files[@]}"
    echo "left out ${#files[@]} tracked files (still on disk); undo with: benchmarks/gpu_payload.sh restore"
    size || true
}

restore() {
    if [ -f "$EXCLUDE" ] && grep -qF "$MARK_BEGIN" "$EXCLUDE"; then
        mapfile -t files < <(sed -n "/^$MARK_BEGIN\$/,/^$MARK_END\$/p" "$EXCLUDE" | grep '^/' | sed 's|^/||')
        sed -i "/^$MARK_BEGIN\$/,/^$MARK_END\$/d" "$EXCLUDE"
        [ "${#files[@]}" -eq 0 ] || git reset -q -- "${files[@]}"
        echo "restored ${#files[@]} tracked files"
    else
        echo "gpu_payload: nothing to restore"
    fi
    rm -rf .gpu
}

size() {  # bytes a call carrying .gpu sends: tracked + untracked-not-ignored files, and .gpu
    local tree carried total
    tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s+=$1} END {print s+0}')
    carried=$(if [ -d .gpu ]; then find .gpu -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; else echo 0; fi)
    total=$((tree + carried))
    awk -v t="$tree" -v c="$carried" -v ok="$([ "$total" -le "$LIMIT" ] && echo fits || echo 'too large: run slim')" \
        'BEGIN { printf "working tree %.1f MiB + .gpu %.1f MiB = %.1f MiB of 64 MiB: %s\n", t / 1048576, c / 1048576, (t + c) / 1048576, ok }'
    [ "$total" -le "$LIMIT" ]
}

command() {
    cat <<'EOF'
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 3; export PYTHONPATH=/tmp/site:$PWD PYTHON=python3 VCMBENCH_SHARED=$PWD/.gpu/shared YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolo PYTHONUNBUFFERED=1; mkdir -p /tmp/yolo; cp "$(python3 -c 'import matplotlib, pathlib; print(pathlib.Path(matplotlib.get_data_path(), "fonts/ttf/DejaVuSans.ttf"))')" /tmp/yolo/Arial.ttf; set -o pipefail; bash benchmarks/gpu_check.sh $OUT/gpu 2>&1 | tee $OUT/gpu_check.log
EOF
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    slim) slim ;;
    restore) restore ;;
    size) size ;;
    command) command ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
