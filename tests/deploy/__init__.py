"""Tests of the deployment files: Kubernetes manifests, compose, Dockerfiles, Prometheus, Grafana."""

import pytest

from tests.servers import find_binary


def promtool_or_skip() -> str:
    try:
        return find_binary("promtool")
    except RuntimeError:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
