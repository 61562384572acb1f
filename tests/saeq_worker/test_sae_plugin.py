"""CONTRIBUTING.md's recipe for an SAE architecture, end to end: a plugin module (tests/plugins)
named in SAEQ_PLUGINS adds `toy` to the API and the worker of a real stack, with no platform module
edited; a train job trains it and the SAE it publishes loads back as the plugin's class."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saeq.client.client import ApiError
from saeq.specs import SaeConfig, TrainSpec, load_plugins
from tests.fixtures_stack import make_stack
from tests.saeq_worker.conftest import HOOK

pytestmark = pytest.mark.integration

PLUGIN = "tests.plugins.toy_sae"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    """API + one worker that both load the toy plugin (the repository root on their path)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with make_stack(
        tmp_path_factory.mktemp("plugin-stack"), redis_srv, s3_srv, SAEQ_PLUGINS=PLUGIN, PYTHONPATH=path
    ) as st:
        yield st


def _toy_train(harvest_id: str, architecture: str = "toy") -> dict:
    spec = TrainSpec(
        activations={"job_id": harvest_id, "hook": HOOK},
        saes=[SaeConfig(name="toy", d_sae=128)],
        batch_size=512,
        total_tokens=10_240,
        validation_tokens=2048,
    ).model_dump(mode="json")
    spec["saes"][0]["architecture"] = architecture  # a dict: this process need not know the name
    return spec


def test_a_plugin_architecture_trains_through_a_real_worker(client_module, harvest_job, tmp_path):
    client = client_module
    done = client.wait(client.submit(_toy_train(harvest_job["id"]))["id"], timeout=300)
    assert done["state"] == "succeeded"
    manifest = client.manifest(done["id"])
    toy = manifest["saes"]["toy"]
    assert toy["architecture"] == "toy" and toy["sparsify"] is None  # sparsify's format is TopK only
    assert 0 < toy["metrics"]["fvu"] < 1.5

    load_plugins(PLUGIN)  # this process reads the trained SAE back
    from saeq.ml.sae import SparseAutoencoder
    from tests.plugins.toy_sae_model import ToySae

    files = client.download(done["id"], tmp_path, prefix="saes/toy/saelens/")
    sae = SparseAutoencoder.load(files[0].parent.resolve())
    assert type(sae) is ToySae and (sae.d_in, sae.d_sae) == (64, 128)


def test_the_api_refuses_an_unknown_architecture(client_module, harvest_job):
    with pytest.raises(ApiError) as e:
        client_module.submit(_toy_train(harvest_job["id"], architecture="gated"))
    assert e.value.status == 422 and "spec.saes.0.architecture" in str(e.value)
    assert "unknown architecture 'gated'" in str(e.value) and "'toy'" in str(e.value)
