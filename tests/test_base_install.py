"""`pip install saeq` (no extras) is the client and the CLI: a fresh venv with only that install has
no torch, Celery, Redis or MinIO, and still drives a running stack with `saeq` and `saeq.Client`.

The wheel is built from this checkout without build isolation (the main venv's setuptools); its
dependencies come from the package index pip is configured with (here a local mirror: offline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saeq.specs import HarvestSpec, ModelSpec
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_BASE = ("torch", "transformers", "celery", "kombu", "redis", "minio", "fastapi", "pydantic_settings")
"""Modules the base install must not bring (the platform's, the API's and the ML core's)."""


def run(cmd: list[str | Path], *, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    """Run `cmd`; its stdout, or an AssertionError that shows what it printed."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """A venv holding `pip install saeq` and nothing else; its bin/ directory."""
    root = tmp_path_factory.mktemp("base-install")
    src = root / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    for name in ("shared", "services", "workers"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, src])
    (wheel,) = wheels.glob("saeq-*.whl")
    run([sys.executable, "-m", "venv", root / "venv"])
    bin_dir = root / "venv" / "bin"
    run([bin_dir / "python", "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-compile", wheel])
    return bin_dir


def test_the_base_install_has_no_platform_or_ml_dependencies(base_venv):
    found = run(
        [
            base_venv / "python",
            "-c",
            f"import importlib.util; print([m for m in {NOT_IN_BASE!r} if importlib.util.find_spec(m)])",
        ]
    )
    assert found.strip() == "[]"
    # The client, the CLI and every module they import at start-up load without any of them.
    loaded = run(
        [
            base_venv / "python",
            "-c",
            "import sys, saeq, saeq.client.cli; saeq.Client; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {NOT_IN_BASE!r}))",
        ]
    )
    assert loaded.strip() == "[]"
    assert "submit" in run([base_venv / "saeq", "--help"])
    assert run([base_venv / "saeq", "keys", "new"]).startswith("saeq_")


def test_up_without_the_local_extra_names_it(base_venv, tmp_path):
    proc = subprocess.run(
        [str(base_venv / "saeq"), "up", "--home", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pip install 'saeq[local]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_base_install_drives_a_running_stack(base_venv, stack, tmp_path):
    model_dir = save_tiny_llama(tmp_path / "tiny-llama", n_layers=2, d_model=32)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=["blocks.0.hook_resid_post"],
        max_tokens=2048,
        context_len=64,
        batch_size=8,
        shard_tokens=1024,
    )
    spec_file = tmp_path / "harvest.yaml"
    spec_file.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "name": "from the base install"}))
    env = {**os.environ, "SAEQ_URL": stack.url, "SAEQ_API_KEY": stack.admin_key}
    saeq = base_venv / "saeq"

    job_id = run([saeq, "submit", spec_file], env=env).strip()
    assert len(job_id) == 32
    assert f"job {job_id}  harvest  succeeded" in run([saeq, "wait", job_id, "--timeout", "180"], env=env, timeout=240)
    assert json.loads(run([saeq, "status", job_id, "--json"], env=env))["state"] == "succeeded"
    assert job_id in run([saeq, "status", "--kind", "harvest"], env=env)

    # The Python client of the same venv reads the job, its artifacts and its manifest.
    script = textwrap.dedent(
        f"""
        import json, sys
        import saeq
        with saeq.Client({stack.url!r}, api_key={stack.admin_key!r}) as c:
            job = c.get({job_id!r})
            manifest = c.manifest({job_id!r})
            listed = [j["id"] for j in c.list(kind="harvest")]
            shards = [a["key"] for a in c.artifacts({job_id!r})["artifacts"] if a["key"].endswith(".safetensors")]
        print(json.dumps({{"state": job["state"], "name": job["name"], "kind": manifest["kind"],
                          "listed": {job_id!r} in listed, "shards": len(shards),
                          "heavy": [m for m in sys.modules if m.split(".")[0] in {NOT_IN_BASE!r}]}}))
        """
    )
    seen = json.loads(run([base_venv / "python", "-c", script]))
    assert seen == {
        "state": "succeeded",
        "name": "from the base install",
        "kind": "harvest",
        "listed": True,
        "shards": 2,  # 2,048 tokens in shards of 1,024
        "heavy": [],
    }
