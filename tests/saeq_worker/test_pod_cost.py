"""The worker's pod asks to be deleted last while a job runs: the exact PATCH it sends to the
Kubernetes API (a real HTTP server on loopback stands in for it), and that it is off outside a
cluster and never fails a job when the API refuses."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from saeq_worker.pod_cost import ANNOTATION, PodCost


class FakeApiServer:
    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def api():
    srv = FakeApiServer()
    yield srv
    srv.httpd.shutdown()


def client(url: str, tmp_path: Path) -> PodCost:
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    return PodCost(url, "saeq", "saeq-worker-gpu-abc", token, verify=False)


def test_a_running_job_marks_the_pod_costly_and_an_idle_pod_cheap(api, tmp_path):
    pod = client(api.url, tmp_path)
    pod.busy()
    pod.busy()  # unchanged: no second request
    (tmp_path / "token").write_text("tok-2")  # the kubelet rotated it
    pod.idle()
    assert [r["path"] for r in api.requests] == ["/api/v1/namespaces/saeq/pods/saeq-worker-gpu-abc"] * 2
    for r in api.requests:
        assert r["headers"]["Content-Type"] == "application/merge-patch+json"
    assert [r["headers"]["Authorization"] for r in api.requests] == ["Bearer tok-1", "Bearer tok-2"]
    assert [r["body"] for r in api.requests] == [
        {"metadata": {"annotations": {ANNOTATION: "1000"}}},
        {"metadata": {"annotations": {ANNOTATION: "0"}}},
    ]


def test_a_refused_patch_is_logged_and_retried_not_raised(tmp_path, caplog):
    srv = FakeApiServer(status=403)
    try:
        pod = client(srv.url, tmp_path)
        pod.busy()
        pod.busy()  # not recorded as set: asks again
        assert len(srv.requests) == 2 and "could not set" in caplog.text
    finally:
        srv.httpd.shutdown()


def test_off_outside_a_cluster_and_on_with_the_standard_paths(tmp_path):
    assert PodCost.from_environment({}, tmp_path) is None
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443", "POD_NAME": "p"}
    assert PodCost.from_environment(env, tmp_path) is None  # no token mounted
    (tmp_path / "token").write_text("t")
    (tmp_path / "namespace").write_text("team-ns\n")
    (tmp_path / "ca.crt").write_text("-")
    pod = PodCost.from_environment(env, tmp_path)
    assert pod is not None and pod.url == "https://10.0.0.1:6443/api/v1/namespaces/team-ns/pods/p"
    assert pod.verify == str(tmp_path / "ca.crt")
