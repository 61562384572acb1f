#!/usr/bin/env bash
# The GPU check: one prepared script for a bare GPU machine without network (it has torch + CUDA,
# transformers, triton; it lacks pydantic, pytest and the peers). Under 8 minutes, each step with
# its own timeout:
#   0. wheels    install what the machine lacks from bench/gpu/wheels (pip --no-index)
#   1. pytest    `pytest -m gpu` (tests/gpu: the CUDA paths)
#   2. train     TopK SAE training tokens/s, d=576, 16,384 latents, k=32: saeq beside sparsify
#   3. feed      bench/feed.py in its GPU mode, when it has one
#   4. harvest   harvest tokens/s beside the bare forward (a SmolLM2-like model from a config)
# Figures are printed as `FIGURE name value unit` lines and, when $OUT is set, written to
# $OUT/figures.txt with the machine's description ($OUT/machine.txt) and each step's log.
#
# The wheels are not in git (bench/gpu/wheels/ is ignored): fetch them on a machine with PyPI with
#   bash bench/gpu/fetch_wheels.sh
# and carry the folder (the device tool: carry=["bench/gpu/wheels"]).
#
# Usage: bash bench/gpu/check.sh [--dry-run | --cpu]
#   --dry-run  print the steps and their commands, run nothing
#   --cpu      run every step tiny on the CPU (tests the script itself where there is no GPU)
set -uo pipefail
cd "$(dirname "$0")/../.."
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --cpu) MODE=cpu ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --cpu]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$MODE" != gpu ] && PY=.venv/bin/python
OUTDIR=${OUT:-$(mktemp -d)}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD/shared:$PWD/workers:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # a system python (PEP 668); old pips ignore it
FAILED=()

TIMEOUT_SCALE=1
if [ "$MODE" = cpu ]; then
  TIMEOUT_SCALE=4  # a small shared CPU: imports alone take tens of seconds under load
  DEVICE=cpu
  TRAIN_ARGS="--steps 3 --d-sae 512 --batch 256"
  HARVEST_ARGS="--tokens 1024 --layers 2 --hook blocks.1.hook_resid_post --batch-size 4"
  FEED_ARGS="--epochs 1 --no-s3"
else
  DEVICE=cuda
  TRAIN_ARGS="--steps 300"
  HARVEST_ARGS="--tokens 262144 --batch-size 64"
  FEED_ARGS="--epochs 2 --no-s3"
fi

# step NAME TIMEOUT_S COMMAND...: run with its own timeout, log to $OUTDIR/NAME.log, collect FIGURE lines.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (timeout ${limit}s): $*"
  [ "$MODE" = dry ] && return 0
  local t0=$SECONDS
  timeout --kill-after=10 "$((limit * TIMEOUT_SCALE))" "$@" >"$OUTDIR/$name.log" 2>&1
  local rc=$?
  grep -E '^(FIGURE|#) ' "$OUTDIR/$name.log" | tee -a "$OUTDIR/figures.txt"
  tail -n 3 "$OUTDIR/$name.log" | sed "s/^/   [$name] /"
  echo "FIGURE step_${name}_s $((SECONDS - t0)) s (rc $rc)" | tee -a "$OUTDIR/figures.txt"
  [ $rc -eq 0 ] || FAILED+=("$name(rc $rc)")
}

{
  date -u +"date %Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
} | tee "$OUTDIR/machine.txt"

# 0. What the machine lacks, from the carried wheels (only the modules that do not import).
MISSING=$("$PY" - <<'EOF'
import importlib.util
need = {"pydantic": "pydantic", "pytest": "pytest", "sparsify": "eai-sparsify", "accelerate": "accelerate",
        "einops": "einops", "natsort": "natsort", "simple_parsing": "simple-parsing", "pytest_timeout": "pytest-timeout"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$MISSING" ]; then
  if [ -d bench/gpu/wheels ]; then
    step wheels 120 "$PY" -m pip install --no-index --find-links bench/gpu/wheels --no-deps $MISSING \
      pydantic-core annotated-types typing-inspection typing-extensions docstring-parser pluggy iniconfig pygments psutil
  else
    echo "# wheels: missing $MISSING and no bench/gpu/wheels: run bash bench/gpu/fetch_wheels.sh where PyPI is reachable" \
      | tee -a "$OUTDIR/figures.txt"
  fi
fi

# Every module with gpu-marked tests (tests/gpu and the feed's); --confcutdir keeps out tests/conftest.py,
# whose server fixtures import Redis, S3 and HTTP clients this machine lacks.
GPU_TESTS=$(grep -rlE "mark\.gpu" tests --include='test_*.py' | sort | tr '\n' ' ')
step pytest 200 "$PY" -m pytest -m gpu $GPU_TESTS -q -p no:cacheprovider --confcutdir tests/saeq -o addopts=""
step train 150 "$PY" bench/gpu/train_rate.py --device $DEVICE $TRAIN_ARGS
if "$PY" bench/feed.py --help 2>/dev/null | grep -q -- "--device"; then
  step feed 90 "$PY" bench/feed.py --device $DEVICE $FEED_ARGS
else
  echo "# feed: not run: bench/feed.py has no GPU mode (--device) yet" | tee -a "$OUTDIR/figures.txt"
fi
step harvest 120 "$PY" bench/gpu/harvest_rate.py --device $DEVICE $HARVEST_ARGS

[ "$MODE" = dry ] && exit 0
echo "figures in $OUTDIR/figures.txt"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED steps: ${FAILED[*]}"
  exit 1
fi
