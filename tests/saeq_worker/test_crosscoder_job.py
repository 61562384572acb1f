"""A crosscoder through a real stack: one harvest captures three layers' residual stream, the API
names activations.hooks when a crosscoder lacks them, and a worker trains a TopK crosscoder over
the three whose published result holds FVU per layer and per-layer decoder norms."""

from __future__ import annotations

import pytest

from saeq.client.client import ApiError
from saeq.specs import ActivationsRef, HarvestSpec, ModelSpec, SaeConfig, TrainSpec
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post")


@pytest.fixture(scope="module")
def layers_harvest(client_module, tmp_path_factory):
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=list(HOOKS),
        max_tokens=8192,
        context_len=64,
        batch_size=8,
        shard_tokens=4096,
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=180)


def _spec(harvest_id: str, **activations) -> dict:
    spec = TrainSpec(
        activations=ActivationsRef(job_id=harvest_id, hooks=HOOKS),
        saes=[SaeConfig(name="cc", architecture="topk_crosscoder", d_sae=256, k=8)],
        batch_size=512,
        total_tokens=10_240,
        validation_tokens=2048,
    ).model_dump(mode="json")
    spec["activations"] |= activations  # as a user's JSON would say it, checked by the API only
    return spec


def test_the_api_names_hooks_when_a_crosscoder_has_one(client_module, layers_harvest):
    with pytest.raises(ApiError) as e:
        client_module.submit(_spec(layers_harvest["id"], hooks=[HOOKS[0]]))
    assert e.value.status == 422 and "spec.activations.hooks" in str(e.value)


def test_a_crosscoder_over_three_layers_reports_per_layer_fvu_and_decoder_norms(
    client_module, layers_harvest, tmp_path
):
    client = client_module
    assert layers_harvest["state"] == "succeeded", layers_harvest
    done = client.wait(client.submit(_spec(layers_harvest["id"]))["id"], timeout=600)
    assert done["state"] == "succeeded", done
    manifest = client.manifest(done["id"])
    cc = manifest["saes"]["cc"]
    assert cc["architecture"] == "topk_crosscoder" and cc["metrics"]["d_in"] == 3 * 64, cc
    layers = manifest["result"]["layers"]["cc"]
    print("crosscoder:", layers)
    assert layers["hooks"] == list(HOOKS)
    assert len(layers["fvu_per_layer"]) == 3 and all(0 < v < 1 for v in layers["fvu_per_layer"]), layers
    assert abs(layers["fvu"] - cc["metrics"]["fvu"]) < 1e-3 and layers["l0"] <= 8
    shares = layers["decoder_norm_shares"]
    assert len(shares["single_layer_share"]) == 3
    assert sum(shares["single_layer_share"]) + shares["multi_layer_share"] == pytest.approx(1.0)
    assert manifest["result"]["data"]["hooks"] == list(HOOKS)

    from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder

    files = client.download(done["id"], tmp_path, prefix="saes/cc/saelens/")
    loaded = SparseAutoencoder.load(files[0].parent)
    assert isinstance(loaded, TopKCrosscoder) and loaded.n_layers == 3
