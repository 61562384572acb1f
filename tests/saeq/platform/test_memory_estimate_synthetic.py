"""The peak-memory estimate of a synthetic harvest (no model loaded) and of training on one (the
generator's width is d_in, not the default model's)."""

from __future__ import annotations

from saeq.platform.memory_estimate import estimate_peak
from saeq.specs import ActivationsRef, HarvestSpec, SaeConfig, SyntheticActivations, TrainSpec

SYNTHETIC = HarvestSpec(source="synthetic", synthetic=SyntheticActivations(n_features=256, d_model=64))


def test_a_synthetic_harvest_loads_no_model():
    est, smollm2 = estimate_peak(SYNTHETIC, device="cpu"), estimate_peak(HarvestSpec(), device="cpu")
    assert est is not None and smollm2 is not None
    assert "model_weights" not in est.parts and est.parts["synthetic_features"] == 256 * 64 * 4
    assert est.total_bytes < smollm2.total_bytes / 4


def test_training_on_it_sizes_the_saes_by_the_generators_width():
    train = TrainSpec(activations=ActivationsRef(job_id="a" * 32), saes=[SaeConfig(expansion_factor=4, k=4)])
    est = estimate_peak(train, device="cpu", resolve=lambda job_id: SYNTHETIC)
    assert est is not None
    d_in, d_sae = 64, 4 * 64
    assert est.parts["sae_weights"] == (2 * d_in * d_sae + d_sae + d_in) * 4
