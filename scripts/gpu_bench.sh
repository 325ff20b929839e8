#!/usr/bin/env bash
# The GPU benchmark in one call (issue 19 §4): SD 1.5 at 512 px and SDXL at 1024 px, random weights.
#
# On the lent GPU machine (Python 3.12, CUDA torch, no diffusers/Kedro/MLflow, nothing reachable),
# from the repository root, with gpu_bundle/ carried (`make gpu-bundle` builds it here):
#     scripts/gpu_bench.sh                 # results in $OUT (default data/08_reporting/bench_gpu)
# Here, on CPU, as a test of the same path:
#     scripts/gpu_bench.sh --dry
# It installs the bundle offline (never in --dry mode) (only what is missing or too old), then runs
# magicapture_pipeline.speed_bench.gpu_run with PYTHONPATH=src (the Kedro-free modules only).
# It ends by itself: gpu_run stops starting variants after DEADLINE_S, `timeout` kills at LIMIT_S.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do [ "$arg" = "--dry" ] && DRY=1; done
if [ -z "${PYTHON:-}" ]; then
  if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-data/08_reporting/bench_gpu}
DEADLINE_S=${DEADLINE_S:-360}
LIMIT_S=${LIMIT_S:-450}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1

if [ "$DRY" = 0 ] && ! "$PYTHON" -c "import diffusers, pydantic" 2>/dev/null; then
  if [ ! -f gpu_bundle/requirements.txt ]; then
    echo "gpu_bench.sh: diffusers/pydantic missing and no gpu_bundle/ (run 'make gpu-bundle' and carry gpu_bundle)" >&2
    exit 2
  fi
  # pip's resolver against what is installed: only missing or too-old distributions come from the bundle
  if ! "$PYTHON" -m pip install -q --no-index --find-links gpu_bundle -r gpu_bundle/requirements.txt; then
    echo "gpu_bench.sh: resolver install failed; installing every bundled wheel with --no-deps" >&2
    "$PYTHON" -m pip install -q --no-deps --no-index gpu_bundle/*.whl
  fi
fi
# gpu_run prints the versions first (python, torch, cuda, diffusers, transformers, peft): in its
# own interpreter, not one more that imports them all again (~9 s CPU)
exec timeout -k 10 "$LIMIT_S" "$PYTHON" -m magicapture_pipeline.speed_bench.gpu_run \
  --out "$OUT" --deadline-s "$DEADLINE_S" "$@"
