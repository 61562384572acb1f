"""Matryoshka BatchTopK through a real stack: the API refuses groups that do not fit (422 at
`matryoshka_groups`), a worker trains one, its SAELens export loads in sae_lens, and an evaluate job
scores it."""

from __future__ import annotations

import pytest
import torch

from saeq.client.client import ApiError
from saeq.specs import EvaluateSpec, SaeConfig, TrainedSae, TrainSpec
from tests.helpers import import_peer
from tests.saeq_worker.conftest import HOOK

pytestmark = pytest.mark.integration


def _spec(harvest_id: str, **sae) -> dict:
    spec = TrainSpec(
        activations={"job_id": harvest_id, "hook": HOOK},
        saes=[SaeConfig(name="mat", architecture="matryoshka_batchtopk", d_sae=256, k=8, matryoshka_groups=[32, 224])],
        batch_size=512,
        total_tokens=30_720,
        validation_tokens=2048,
    ).model_dump(mode="json")
    spec["saes"][0] |= sae  # as a user's JSON would say it, checked by the API only
    return spec


def test_the_api_names_matryoshka_groups_when_they_do_not_fit(client_module, harvest_job):
    with pytest.raises(ApiError) as e:
        client_module.submit(_spec(harvest_job["id"], matryoshka_groups=[32, 200]))
    assert e.value.status == 422 and "spec.saes.0.matryoshka_groups" in str(e.value)
    assert "sum to 232, not d_sae=256" in str(e.value)


def test_a_matryoshka_sae_trains_exports_to_saelens_and_evaluates(client_module, harvest_job, tmp_path):
    sae_lens = import_peer("sae_lens")
    client = client_module
    train = client.submit(_spec(harvest_job["id"]))
    evaluate = client.submit(
        EvaluateSpec(sae=TrainedSae(job_id=train["id"], name="mat"), max_tokens=2048), depends_on=[train["id"]]
    )
    done = client.wait(train["id"], timeout=600)
    assert done["state"] == "succeeded", done
    mat = client.manifest(train["id"])["saes"]["mat"]
    assert mat["architecture"] == "matryoshka_batchtopk" and 0 < mat["metrics"]["fvu"] < 1

    files = client.download(train["id"], tmp_path, prefix="saes/mat/saelens/")
    folder = files[0].parent.resolve()
    theirs = sae_lens.SAE.load_from_disk(folder)
    assert theirs.cfg.architecture() == "jumprelu"
    assert theirs.cfg.metadata.training_architecture_details["matryoshka_widths"] == [32, 256]
    from saeq.ml.sae import MatryoshkaBatchTopKSae, SparseAutoencoder

    ours = SparseAutoencoder.load(folder)
    assert isinstance(ours, MatryoshkaBatchTopKSae) and ours.groups == [32, 224]
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours.decode(ours.encode(x)), atol=1e-5, rtol=1e-5)

    report = client.wait(evaluate["id"], timeout=600)
    assert report["state"] == "succeeded", report
    m = client.manifest(report["id"])["metrics"]
    # The threshold estimated in training makes it sparse at inference; after 60 steps its moving
    # average (rate 0.01) has come 45% of its way, so more than k=8 latents fire, far fewer than 256.
    assert 0 < m["fvu"] < 1 and 1 < m["l0"] < 64
