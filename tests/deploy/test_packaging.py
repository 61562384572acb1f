"""The wheel the images install holds every module and the browser's static files (an editable
install finds new subpackages by path, a real install only those listed in pyproject.toml), and
builds with the oldest setuptools pyproject.toml admits, carrying the license."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "saeq": ROOT / "shared" / "saeq",
    "saeq_api": ROOT / "services" / "saeq_api",
    "saeq_worker": ROOT / "workers" / "saeq_worker",
}
# The build-floor wheels (setuptools==<floor>) are fetched from PyPI once and kept here.
WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saeq-tests" / "build-floor"


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """A copy of the files git does not ignore: a stale build/ beside the sources would hide a
    missing package. Untracked ones count (a new module not yet committed); an index entry whose
    file is gone does not (a checkout whose index lags its commits)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    src = tmp_path_factory.mktemp("tree") / "src"
    for name in dict.fromkeys(listed.splitlines()):
        if not (ROOT / name).is_file():
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    return src


def test_the_wheel_has_every_module_and_static_file(source_tree, tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source_tree),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    names = set(zipfile.ZipFile(next(tmp_path.glob("saeq-*.whl"))).namelist())
    expected = {
        f"{package}/{path.relative_to(src).as_posix()}"
        for package, src in SOURCES.items()
        for path in src.rglob("*")
        if path.suffix in (".py", ".js", ".css", ".html") and "__pycache__" not in path.parts
    }
    assert expected - names == set()
    assert "saeq_api/static/browser.js" in names and "saeq/checks/run.py" in names


def floor_pins() -> list[str]:
    """build-system.requires with each lower bound made exact: `setuptools>=77.0.1` becomes
    `setuptools==77.0.1`, the oldest build backend a user's pip may pick."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = []
    for requirement in requires:
        found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(,.*)?", requirement)
        assert found, f"build-system.requires: {requirement!r} needs a `>=` floor"
        pins.append(f"{found[1]}=={found[2]}")
    return pins


def pip_install_target(target: Path, requirements: list[str]) -> None:
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    offline = [*pip, "install", "--no-index", "--find-links", str(WHEEL_CACHE), "--target", str(target)]
    if subprocess.run([*offline, *requirements], capture_output=True).returncode == 0:
        return
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run(
        [*pip, "download", "--only-binary", ":all:", "-d", str(WHEEL_CACHE), *requirements],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fetched.returncode == 0, f"could not fetch {requirements} from PyPI:\n{fetched.stderr}"
    subprocess.run([*offline, *requirements], check=True, capture_output=True, timeout=120)


# The PEP 517 calls pip's build isolation makes, run with only the floor backend on sys.path
# (python -S: none of .venv's site-packages, so .venv's newer setuptools cannot stand in).
BUILD = """
import sys
backend, step, *out = sys.argv[1:]  # read first: setuptools rewrites sys.argv as it runs
sys.path.insert(0, backend)
from setuptools import build_meta
if step == "requires":
    print("requires:", *build_meta.get_requires_for_build_wheel())  # the backend logs to stdout too
else:
    build_meta.build_sdist(out[0])
    build_meta.build_wheel(out[0])
"""


def test_the_oldest_declared_setuptools_builds_the_sdist_and_the_wheel_with_the_license(source_tree, tmp_path):
    backend = tmp_path / "backend"
    pip_install_target(backend, floor_pins())
    python = [sys.executable, "-S", "-c", BUILD, str(backend)]
    requires = subprocess.run([*python, "requires"], cwd=source_tree, capture_output=True, text=True, timeout=120)
    assert requires.returncode == 0, f"{floor_pins()} cannot read pyproject.toml:\n{requires.stderr[-3000:]}"
    extra = requires.stdout.splitlines()[-1].split()[1:]
    if extra:
        pip_install_target(backend, extra)
    out = tmp_path / "dist"
    out.mkdir()
    built = subprocess.run([*python, "build", str(out)], cwd=source_tree, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"{floor_pins()} cannot build saeq:\n{built.stderr[-3000:]}"

    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    wheel = zipfile.ZipFile(next(out.glob("saeq-*.whl")))
    licenses = [name for name in wheel.namelist() if name.endswith(".dist-info/licenses/LICENSE")]
    assert licenses, "the wheel does not carry LICENSE"
    assert wheel.read(licenses[0]).decode() == license_text
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    with tarfile.open(next(out.glob("saeq-*.tar.gz"))) as sdist:
        assert any(name.endswith("/LICENSE") for name in sdist.getnames()), "the sdist does not carry LICENSE"


# ------------------------------------------------------------------------------ constraints.txt

CONSTRAINTS = ROOT / "constraints.txt"
UNPINNED = {"torch", "saeq"}  # torch: each image brings its own (docker/*.Dockerfile, bootstrap.sh)


def pins_of(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not a `name==version` pin"
            pins[canonicalize_name(name)] = version
    return pins


def constraint_problems(pins: dict[str, str]) -> list[str]:
    """Walk saeq[api,worker]'s requirements through the installed distributions' metadata: each
    one the extras need must be pinned, to a version every requirement on it admits (pyproject's
    ranges first of all) and the one installed here, the version the tests ran with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["api"]]
    lines += project["optional-dependencies"]["worker"]
    todo = [(Requirement(line), "", "pyproject.toml") for line in lines]
    problems, seen = [], set()
    while todo:
        requirement, extra, wanted_by = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name in UNPINNED:
            continue
        if name not in pins:
            problems.append(f"{name} ({wanted_by} needs {requirement}) is not pinned")
            continue
        if not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside {wanted_by}'s {requirement}")
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        dist = metadata.distribution(name)
        if dist.version != pins[name]:
            problems.append(f"{name}=={pins[name]} but {dist.version} is installed")
        for line in dist.requires or []:
            todo += [(Requirement(line), wanted, name) for wanted in requirement.extras or {""}]
    return problems


def test_constraints_pin_every_distribution_the_api_and_worker_extras_need():
    assert CONSTRAINTS.is_file(), "no constraints.txt: run .venv/bin/python scripts/constraints.py"
    pins = pins_of(CONSTRAINTS.read_text())
    problems = constraint_problems(pins)
    assert not problems, "constraints.txt (regenerate: .venv/bin/python scripts/constraints.py):\n" + "\n".join(
        problems
    )
    assert not UNPINNED & set(pins), "torch and saeq are not pinned in constraints.txt"
    # The check bites: a missing pin and one outside pyproject's range are both reported.
    without_fastapi = {k: v for k, v in pins.items() if k != "fastapi"}
    assert any(p.startswith("fastapi (pyproject.toml needs") for p in constraint_problems(without_fastapi))
    assert any("outside pyproject.toml's click" in p for p in constraint_problems({**pins, "click": "7.0"}))


# ------------------------------------------------------------------------------ bootstrap.sh

# A stand-in python for .venv: logs its arguments, prints pip's known noise line, and fails as pip
# does when asked to install $FAIL_ON.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *"-m pip"*)
    echo "WARNING: Requirement 'x' is ignored: it is neither a file nor a directory"
    case "$*" in *"$FAIL_ON"*) echo "ERROR: No matching distribution found for $FAIL_ON" >&2; exit 1;; esac;;
esac
exit 0
"""


def run_bootstrap(tmp_path: Path, fail_on: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    for name in ("scripts/bootstrap.sh", "pyproject.toml", "constraints.txt"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, repo / name)
    python = repo / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "python.log"
    env = {**os.environ, "FAKE_LOG": str(log), "FAIL_ON": fail_on, "SAEQ_TORCH_VERSION": "0.0.0-nonexistent"}
    out = subprocess.run(
        ["bash", str(repo / "scripts" / "bootstrap.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    return out, repo / ".venv" / ".saeq-installed-test", log


def test_bootstrap_stops_with_pip_s_error_when_an_install_fails(tmp_path):
    out, stamp, log = run_bootstrap(tmp_path, fail_on="torch==0.0.0-nonexistent")
    assert out.returncode != 0, "bootstrap.sh succeeded although pip failed:\n" + out.stdout + out.stderr
    assert "No matching distribution found for torch==0.0.0-nonexistent" in out.stdout + out.stderr
    assert not stamp.exists()
    assert "-e .[test]" not in log.read_text()  # it stopped at the failure


def test_bootstrap_drops_pip_s_noise_line_and_installs_with_the_constraints(tmp_path):
    out, stamp, log = run_bootstrap(tmp_path, fail_on="nothing-fails")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is ignored: it is neither" not in out.stdout + out.stderr
    assert stamp.exists()
    assert "install -c constraints.txt -e .[test]" in log.read_text()
