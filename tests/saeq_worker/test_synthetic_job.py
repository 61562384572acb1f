"""A synthetic harvest through a real stack: a worker draws tokens from a generator with known
features (no model), stores the truth write-once beside the shards, and a TopK SAE trained on it
reports its recovery of the true features in the train manifest and the job's progress; an
evaluate job of that SAE is refused naming spec.sae (there is no model to splice it into)."""

from __future__ import annotations

import hashlib

import pytest

from saeq.client.client import JobFailed
from saeq.specs import ActivationsRef, EvaluateSpec, HarvestSpec, SaeConfig, SyntheticActivations, TrainedSae, TrainSpec

pytestmark = pytest.mark.integration

HOOK = "blocks.0.hook_resid_post"  # a synthetic harvest's hook name is only a label
GENERATOR = SyntheticActivations(n_features=256, d_model=64, seed=3)
MCC_FLOOR, MATCHED_FLOOR = 0.70, 120
"""Measured with this spec's settings (seed s for the generator, the harvest and the SAE, the same
code in-process, 2026-12-03): seeds 3..7 MCC 0.732, 0.738, 0.739, 0.743, 0.738 and 142..149 of
the 256 true features matched at |cos| >= 0.9; a random decoder of 256 rows scores MCC 0.354-0.360
against these features. A trainer that learns fewer features (a broken AuxK, scale or step) falls
under the floors."""


@pytest.fixture(scope="module")
def synthetic_harvest(client_module):
    spec = HarvestSpec(source="synthetic", synthetic=GENERATOR, hooks=[HOOK], max_tokens=65_536, seed=3)
    return client_module.wait(client_module.submit(spec)["id"], timeout=120)


def test_a_synthetic_harvest_stores_shards_and_its_truth(client_module, synthetic_harvest, tmp_path):
    assert synthetic_harvest["state"] == "succeeded", synthetic_harvest
    manifest = client_module.manifest(synthetic_harvest["id"])
    assert manifest["n_tokens"] == 65_536 and manifest["d_model"] == 64 and manifest["model"]["source"] == "synthetic"
    hook = manifest["hooks"][HOOK]
    assert [s["n_tokens"] for s in hook["shards"]] == [16_384] * 4 and hook["dtype"] == "bfloat16"
    assert hook["sinks"]["n_position_zero"] == 0, hook["sinks"]  # no contexts, no position 0
    truth = manifest["synthetic"]
    assert truth["generator"]["n_features"] == 256 and truth["seed"] == 3 and 0.5 < truth["expected_l0"] < 5
    [path] = client_module.download(synthetic_harvest["id"], tmp_path, prefix="truth/")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == truth["sha256"]

    from saeq.ml.synthetic_truth import read_truth

    stored = read_truth(path.read_bytes())
    assert stored.features_FD.shape == (256, 64) and stored.model() is not None  # the generator rebuilds it


def test_training_on_it_reports_recovery_and_evaluate_is_refused(client_module, synthetic_harvest):
    client = client_module
    spec = TrainSpec(
        activations=ActivationsRef(job_id=synthetic_harvest["id"], hook=HOOK),
        saes=[SaeConfig(name="topk", d_sae=256, k=4, lr=1e-2)],
        batch_size=1024,
        total_tokens=196_608,  # 3 epochs of the 61,440 training tokens
        validation_tokens=4096,
        seed=3,
    )
    done = client.wait(client.submit(spec)["id"], timeout=300)
    assert done["state"] == "succeeded", done
    manifest = client.manifest(done["id"])
    recovery = manifest["result"]["recovery"]
    figures = recovery["saes"]["topk"]
    print("recovery:", {k: v for k, v in figures.items() if k != "per_feature"})
    assert recovery["heldout"] == {"n_tokens": 4096, "stream": "heldout", "seed": 3, "firing_scored": True}
    assert figures["mcc"] > MCC_FLOOR and figures["n_matched"] >= MATCHED_FLOOR, figures
    assert len(figures["per_feature"]["f1"]) == 256 and 0 < figures["f1_per_feature_mean"] <= 1
    assert manifest["saes"]["topk"]["metrics"]["recovery"]["mcc"] == figures["mcc"]
    assert f"MCC {figures['mcc']:.3f}" in done["progress"]["message"], done["progress"]

    with pytest.raises(JobFailed) as failed:
        client.wait(client.submit(EvaluateSpec(sae=TrainedSae(job_id=done["id"])))["id"], timeout=120)
    error = failed.value.job["error"]
    assert error["field"] == "spec.sae" and "synthetic activations" in error["message"], error
