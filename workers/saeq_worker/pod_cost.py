"""The worker marks its own pod as costly to delete while a job runs
(`controller.kubernetes.io/pod-deletion-cost`), so a scale-in (KEDA lowering the Deployment's
replicas) removes an idle pod, not one halfway through a training.

One PATCH of the pod's annotation through the in-cluster API: the service-account token and CA at
the standard paths, the pod's name and namespace from the downward API (POD_NAME, POD_NAMESPACE).
Outside a cluster (no KUBERNETES_SERVICE_HOST, no token) it is off. A failed PATCH is logged and
never fails the job: the cost only orders which pod goes first.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import httpx

log = logging.getLogger("saeq.worker")

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
BUSY_COST = 1000  # a job runs: delete this pod last
IDLE_COST = 0  # the cost of a pod without the annotation
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class PodCost:
    def __init__(self, api_url: str, namespace: str, pod: str, token_file: Path, verify: str | bool = True) -> None:
        self.url = f"{api_url.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}"
        self.token_file = token_file
        self.verify = verify
        self.last: int | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ, sa_dir: Path = SERVICE_ACCOUNT) -> PodCost | None:
        """The in-cluster client, or None outside a cluster (or without the pod's name)."""
        host, port, pod = (
            env.get("KUBERNETES_SERVICE_HOST"),
            env.get("KUBERNETES_SERVICE_PORT", "443"),
            env.get("POD_NAME"),
        )
        token = sa_dir / "token"
        if not host or not pod or not token.is_file():
            return None
        namespace = env.get("POD_NAMESPACE") or (sa_dir / "namespace").read_text().strip()
        host = f"[{host}]" if ":" in host else host  # an IPv6 Service address
        ca = sa_dir / "ca.crt"
        return cls(f"https://{host}:{port}", namespace, pod, token, str(ca) if ca.is_file() else True)

    def set(self, cost: int) -> None:
        if cost == self.last:
            return
        body = {"metadata": {"annotations": {ANNOTATION: str(cost)}}}
        try:
            # Read each time: the kubelet rotates the projected token.
            token = self.token_file.read_text().strip()
            r = httpx.patch(
                self.url,
                json=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": MERGE_PATCH},
                verify=self.verify,
                timeout=5.0,
            )
            r.raise_for_status()
            self.last = cost
        except (OSError, httpx.HTTPError) as e:
            log.warning("could not set %s=%s on this pod: %s", ANNOTATION, cost, e)

    def busy(self) -> None:
        self.set(BUSY_COST)

    def idle(self) -> None:
        self.set(IDLE_COST)


@functools.cache
def this_pod() -> PodCost | None:
    """This process's client (each pool child makes its own), or None outside a cluster."""
    return PodCost.from_environment()
