#!/usr/bin/env bash
# The mutation lane (on demand, not in CI): mutmut on the core modules of benchmarks/mutation.toml.
#   benchmarks/mutation.sh                      # every module (long: see benchmarks/README.md)
#   benchmarks/mutation.sh metrics.bd plan      # some modules
#   benchmarks/mutation.sh --list               # the modules and the test files run for each
# Needs mutmut (pip install -e '.[mutation]'); working folders go to .mutation/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
python -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install -e '.[mutation]'" >&2; exit 2; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec python benchmarks/mutation.py "$@"
