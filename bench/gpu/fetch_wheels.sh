#!/usr/bin/env bash
# Fetch the wheels bench/gpu/check.sh installs on a bare GPU machine (no network there) into
# bench/gpu/wheels (git-ignored; carry it explicitly). Pure-python wheels once; the binary ones
# (pydantic-core, psutil) for the CPython versions of common CUDA images. Run where PyPI is reachable.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-.venv/bin/pip}
DEST=bench/gpu/wheels
mkdir -p "$DEST"
# Versions pinned to what saeq's own environment resolved, so the GPU run tests the same code.
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
PURE=""
for pkg in pydantic annotated-types typing-inspection typing-extensions eai-sparsify accelerate einops natsort \
  simple-parsing docstring-parser pytest pluggy iniconfig pygments pytest-timeout; do
  PURE="$PURE $pkg==$(version "$pkg")"
done
$PIP download --no-deps --only-binary=:all: --dest "$DEST" $PURE
for py in 3.10 3.11 3.12; do
  $PIP download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version "$py" --dest "$DEST" "pydantic-core==$(version pydantic-core)" "psutil==$(version psutil)"
done
du -sh "$DEST"
