"""The layer contract ([tool.importlinter] in pyproject.toml) holds on the tree, and bites when broken.

Each case copies the three packages into a temporary directory, adds one forbidden import and
checks that `lint-imports` fails naming the contract and the added import. No servers: seconds.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGE_DIRS = ("shared/saeq", "services/saeq_api", "workers/saeq_worker")


def lint_imports(root: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the packages under `root`, found there first (not the editable install)."""
    paths = [str(root / d.split("/")[0]) for d in PACKAGE_DIRS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [str(LINT_IMPORTS), str(root / "pyproject.toml"), "--no-cache", "--no-logo"]
    for contract_id in contract_ids:
        cmd += ["--contract", contract_id]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def copy_tree(dest: Path) -> Path:
    for d in PACKAGE_DIRS:
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_tree_keeps_every_layer_contract():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ", 0 broken." in run.stdout, run.stdout


def _dev_imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, inside a function?) for each import of saeq.dev in `tree`."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("saeq.dev"):
                found.append((child.module or "", inside))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, inside) for alias in child.names if alias.name.startswith("saeq.dev"))
            visit(child, inside)

    visit(tree, False)
    return found


def test_the_cli_imports_the_local_stack_and_the_demo_only_inside_their_commands():
    """The contracts let saeq.client.cli import saeq.dev (`saeq up`, `saeq demo`: saeq[local]), but
    only inside those commands, so `saeq --help` and every other command run on the base install."""
    imports = _dev_imports(ast.parse((ROOT / "shared/saeq/client/cli.py").read_text()))
    assert {m for m, _ in imports} == {"saeq.dev.local_stack", "saeq.dev.demo"}, imports  # what ignore_imports names
    assert all(inside for _, inside in imports), imports


# (file, forbidden code appended to it, contract that must break, the arrow it must report)
FORBIDDEN = [
    ("shared/saeq/platform/teams.py", "import torch", "platform-no-torch", "saeq.platform.teams -> torch"),
    ("shared/saeq/jobs/train.py", "import redis", "ml-no-platform", "saeq.jobs.train -> redis"),
    (
        "shared/saeq/jobs/train.py",
        "from saeq.platform import store",
        "ml-no-platform",
        "saeq.jobs.train -> saeq.platform.store",
    ),
    (
        "shared/saeq/specs/__init__.py",
        "from saeq.platform import registry",
        "contracts",
        "saeq.specs -> saeq.platform.registry",
    ),
    (
        "shared/saeq/ml/sinks.py",
        "from saeq.jobs import evaluate",
        "ml-below-jobs",
        "saeq.ml.sinks -> saeq.jobs.evaluate",
    ),
    # A lazy import counts: a function-level `import torch` still needs torch installed in the API.
    ("services/saeq_api/main.py", "def _lazy():\n    import torch", "api-no-torch", "saeq_api.main -> torch"),
    # Only the CLI's `saeq up` / `saeq demo` may import saeq.dev; the client library may not.
    (
        "shared/saeq/client/client.py",
        "def _lazy():\n    from saeq.dev import local_stack",
        "client-http-only",
        "saeq.client.client -> saeq.dev.local_stack",
    ),
    ("shared/saeq/client/client.py", "import redis", "client-http-only", "saeq.client.client -> redis"),
    ("shared/saeq/dev/demo.py", "import saeq_api.main", "shared-below-services", "saeq.dev.demo -> saeq_api.main"),
    ("workers/saeq_worker/running.py", "import saeq_api", "services-apart", "saeq_worker.running -> saeq_api"),
    (
        "workers/saeq_worker/label.py",
        "from saeq_worker import evaluate",
        "worker-adapters-apart",
        "saeq_worker.label -> saeq_worker.evaluate",
    ),
]


def test_every_contract_is_shown_to_bite():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {c["id"] for c in contracts} == {contract_id for _, _, contract_id, _ in FORBIDDEN}


@pytest.mark.parametrize(("path", "code", "contract_id", "arrow"), FORBIDDEN, ids=[f[3] for f in FORBIDDEN])
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, path: str, code: str, contract_id: str, arrow: str):
    root = copy_tree(tmp_path)
    before = lint_imports(root, contract_id)
    assert arrow not in before.stdout, before.stdout  # the arrow is new: the copy did not have it
    target = root / path
    target.write_text(target.read_text() + f"\n\n{code}  # added by tests/test_layers.py\n")
    run = lint_imports(root, contract_id)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "BROKEN" in run.stdout and arrow in run.stdout, run.stdout + run.stderr
