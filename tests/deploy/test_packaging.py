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
from pathlib import Path

import pytest

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
