"""The outside probe's file reads through hub names, replayed on a real API and worker (issue 15):
a worker started in a directory holding `secretdir` never reads it, whatever a spec names."""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from tests.fixtures_stack import make_stack
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

SECRET = "PRIVATE-MARKER-91c4 quarterly figures nobody may harvest"


def _plant_secrets(directory, tiny_model) -> None:
    """`secretdir` holding private text, `privatemodel` a loadable model: a loader that looked in
    the working directory would read them and succeed."""
    (directory / "secretdir").mkdir(exist_ok=True)
    (directory / "secretdir" / "private.txt").write_text((SECRET + "\n\n") * 64)
    shutil.copytree(tiny_model, directory / "privatemodel", dirs_exist_ok=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=2, d_model=32)


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory, tiny_model):
    directory = tmp_path_factory.mktemp("launch")
    _plant_secrets(directory, tiny_model)
    return directory


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv, launch_dir, tiny_model):
    """A stack whose worker was started in `launch_dir`, as the tester's was; `secretdir` is also
    planted in the worker's own working directory once it has moved there."""
    here = os.getcwd()
    os.chdir(launch_dir)
    try:
        st = make_stack(tmp_path_factory.mktemp("stack"), redis_srv, s3_srv).__enter__()
    finally:
        os.chdir(here)
    try:
        st.worker_cwd = _worker_cwd(st.procs["worker"].pid, launch_dir)
        if st.worker_cwd != str(launch_dir):
            st.worker_cwd_entries = sorted(os.listdir(st.worker_cwd))
            _plant_secrets(type(launch_dir)(st.worker_cwd), tiny_model)
        yield st
    finally:
        st.__exit__(None, None, None)


def _worker_cwd(pid: int, launch_dir, timeout_s: float = 90) -> str:
    """The worker's working directory once it has started (it moves at worker_init)."""
    deadline = time.monotonic() + timeout_s
    cwd = os.readlink(f"/proc/{pid}/cwd")
    while cwd == str(launch_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
        cwd = os.readlink(f"/proc/{pid}/cwd")
    return cwd


def _submit(stack, spec: dict) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/jobs", json={"spec": spec}, timeout=60, headers={"Authorization": f"Bearer {stack.admin_key}"}
    )


def _assert_failed_without_reading(client, job_id: str, field: str, launch_dir) -> None:
    job = client.wait(job_id, timeout=240, raise_on_failure=False)
    assert job["state"] == "failed", job
    error = job["error"]
    assert error["code"] == "not_found" and error["field"] == field, error
    assert SECRET not in error["message"] and str(launch_dir) not in error["message"]
    # Nothing was published: no shard can hold the secret's tokens.
    assert client.artifacts(job_id)["artifacts"] == []


def test_hub_names_never_read_the_workers_directory(stack, client, launch_dir, tiny_model):
    base = {
        "kind": "harvest",
        "hooks": ["blocks.0.hook_resid_post"],
        "max_tokens": 1024,
        "context_len": 64,
        "batch_size": 4,
        "shard_tokens": 256,
    }
    dataset = _submit(
        stack, {**base, "model": {"name": str(tiny_model)}, "corpus": {"source": "hf", "dataset": "secretdir"}}
    )
    model = _submit(stack, {**base, "model": {"name": "privatemodel"}})
    builder = _submit(
        stack, {**base, "model": {"name": str(tiny_model)}, "corpus": {"source": "hf", "dataset": "text"}}
    )  # datasets' reader of local files
    for resp in (dataset, model, builder):
        assert resp.status_code == 201, resp.text
    _assert_failed_without_reading(client, dataset.json()["id"], "spec.corpus.dataset", launch_dir)
    _assert_failed_without_reading(client, model.json()["id"], "spec.model.name", launch_dir)
    job = client.wait(builder.json()["id"], timeout=240, raise_on_failure=False)
    assert job["state"] == "failed" and job["error"]["code"] == "invalid_spec", job
    assert job["error"]["field"] == "spec.corpus.dataset" and client.artifacts(job["id"])["artifacts"] == []

    # The worker runs in a private directory of its own, empty when it started.
    assert stack.worker_cwd != str(launch_dir)
    assert stack.worker_cwd_entries == [] and os.stat(stack.worker_cwd).st_mode & 0o077 == 0


def test_file_names_with_a_directory_are_refused_at_submit(stack):
    for model, field in [
        ({"name": "secretdir", "gguf_file": "../../../etc/passwd"}, "spec.model.gguf_file"),
        ({"name": "secretdir", "gguf_file": "../../../etc/passwd.gguf"}, "spec.model.gguf_file"),
        ({"name": "/etc\x00/passwd"}, "spec.model.name"),
        ({"name": "secretdir/../../etc"}, "spec.model.name"),
    ]:
        resp = _submit(stack, {"kind": "harvest", "model": model, "hooks": ["blocks.0.hook_resid_post"]})
        assert resp.status_code == 422, resp.text
        assert [d["field"] for d in resp.json()["detail"]] == [field]
