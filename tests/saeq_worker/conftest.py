"""A harvest of a tiny Llama and a small TopK SAE trained on it, once per module, a client of the
module's stack, and a cheap label job (metadata only) that names the features a steer job edits."""

from __future__ import annotations

import pytest

from saeq.specs import HarvestSpec, LabelSpec, ModelSpec, SaeConfig, TrainSpec
from tests.tiny_model import save_tiny_llama

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def harvest_job(client_module, tmp_path_factory):
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=[HOOK],
        max_tokens=24_576,
        context_len=64,
        batch_size=8,
        shard_tokens=4096,
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=180)


@pytest.fixture(scope="module")
def client_module(stack):
    from saeq.client.client import Client

    with Client(stack.url, api_key=stack.admin_key, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def train_job(client_module, harvest_job):
    spec = TrainSpec(
        activations={"job_id": harvest_job["id"], "hook": HOOK},
        saes=[SaeConfig(name="topk", d_sae=256, k=8)],
        batch_size=512,
        total_tokens=30_720,
        validation_tokens=2048,
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=300)


def submit_metadata_labels(client, train_job_id: str, features: list[int]) -> dict:
    """A label job of those features, metadata explainer and embedding scorer only (seconds): its
    labels are the concept a steer job's judge and concept similarity look for."""
    spec = LabelSpec(
        sae={"job_id": train_job_id},
        index_tokens=2048,
        features=features,
        min_activating=1,
        explainers=[{"backend": "metadata"}],
        judge=None,
        scorers=["embedding"],
        n_explain_examples=2,
        n_score_examples=2,
    )
    return client.submit(spec)
