"""The wheel the images install holds every module and the browser's static files: an editable
install finds new subpackages by path, a real install only those listed in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "saeq": ROOT / "shared" / "saeq",
    "saeq_api": ROOT / "services" / "saeq_api",
    "saeq_worker": ROOT / "workers" / "saeq_worker",
}


def test_the_wheel_has_every_module_and_static_file(tmp_path):
    # From a copy of the files git does not ignore: a stale build/ beside the sources would hide a
    # missing package. Untracked ones count (a new module not yet committed); an index entry whose
    # file is gone does not (a checkout whose index lags its commits).
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    src = tmp_path / "src"
    for name in dict.fromkeys(listed.splitlines()):
        if not (ROOT / name).is_file():
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
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
            str(src),
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
