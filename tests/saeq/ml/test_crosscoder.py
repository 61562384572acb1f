"""The crosscoder: its loss is the sum of per-layer squared errors, its decoder norms say which
layers a feature lives in, its spec names 2..8 hooks, and a short training finds planted
single-layer features."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from saeq.jobs.train import train_saes
from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder, sae_class
from saeq.ml.sae.crosscoder import decoder_norm_shares, layer_report
from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

D, L = 16, 3
HOOKS = tuple(f"blocks.{i}.hook_resid_post" for i in range(L))
JOB = "0" * 32


def _spec(hooks=HOOKS, architecture="topk_crosscoder", **activations) -> TrainSpec:
    return TrainSpec(
        activations=ActivationsRef(job_id=JOB, hooks=hooks, **activations),
        saes=[SaeConfig(name="cc", architecture=architecture, d_sae=96, k=4)],
        batch_size=256,
        total_tokens=256 * 120,
        normalize_activations=False,
        b_dec_init="zeros",
    )


def test_the_loss_is_the_sum_over_layers_of_each_layers_squared_error():
    assert sae_class("topk_crosscoder") is TopKCrosscoder
    cc = TopKCrosscoder(L * D, 64, k=4, n_layers=L, generator=torch.Generator().manual_seed(0))
    assert isinstance(cc, TopKCrosscoder) and cc.d_layer == D  # (SparseAutoencoder.__new__ types it as the base)
    x = torch.randn(32, L * D)
    out = cc(x)
    assert out.recon.shape == (32, L * D)
    per_layer = (cc.layers(x) - cc.layers(out.recon)).pow(2).sum(dim=2).mean(dim=0)  # (L,)
    torch.testing.assert_close(out.mse, per_layer.sum())
    assert float(out.l0) <= 4


def test_decoder_norms_say_which_layer_a_feature_lives_in():
    cc = TopKCrosscoder(L * D, 4, k=2, n_layers=L)
    assert isinstance(cc, TopKCrosscoder)
    with torch.no_grad():
        cc.W_dec.zero_()
        cc.W_dec[0, :D] = 1.0  # layer 0 only
        cc.W_dec[1, D : 2 * D] = 1.0  # layer 1 only
        cc.W_dec[2, D : 2 * D] = 2.0  # layer 1 mostly, a little of layer 2
        cc.W_dec[2, 2 * D :] = 0.5
        cc.W_dec[3] = 1.0  # every layer alike
    norms = cc.layer_decoder_norms()
    assert norms.shape == (4, L)
    torch.testing.assert_close(norms[0], torch.tensor([4.0, 0.0, 0.0]))  # sqrt(16)
    shares = decoder_norm_shares(norms)
    assert shares["single_layer_share"] == [0.25, 0.5, 0.0] and shares["multi_layer_share"] == 0.25


def test_a_crosscoder_saves_and_loads_with_its_layer_count(tmp_path):
    cc = TopKCrosscoder(L * D, 32, k=4, n_layers=L)
    loaded = SparseAutoencoder.load(cc.save(tmp_path / "cc"))
    assert isinstance(loaded, TopKCrosscoder) and loaded.n_layers == L
    x = torch.randn(8, L * D)
    torch.testing.assert_close(loaded.encode(x), cc.encode(x))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hooks": None}, "activations.hooks"),
        ({"hooks": HOOKS[:1]}, "activations.hooks"),
        ({"hooks": tuple(f"blocks.{i}.hook_resid_post" for i in range(9))}, "activations.hooks"),
        ({"hooks": (HOOKS[0], HOOKS[0])}, "activations.hooks"),
        ({"architecture": "topk"}, "saes.0.architecture"),
        ({"hook": HOOKS[1]}, "activations.hook"),
        ({"target_hook": HOOKS[1]}, "activations.target_hook"),
    ],
)
def test_the_spec_refuses_a_bad_crosscoder_naming_the_field(kwargs, field):
    with pytest.raises(ValidationError) as e:
        _spec(**kwargs)
    assert field in str(e.value).replace("\n", "."), str(e.value)


def test_training_finds_features_planted_in_one_layer():
    gen = torch.Generator().manual_seed(0)
    # 24 features, 8 per layer, each writing one random direction into its own layer only
    dirs = torch.randn(24, D, generator=gen)
    dirs /= dirs.norm(dim=1, keepdim=True)
    planted = torch.zeros(24, L * D)
    for f in range(24):
        layer = f // 8
        planted[f, layer * D : (layer + 1) * D] = dirs[f]

    def batches():
        while True:
            on = (torch.rand(256, 24, generator=gen) < 3 / 24) * (1 + torch.rand(256, 24, generator=gen))
            yield on @ planted

    spec = _spec()
    result = train_saes(spec, batches(), validation=next(batches()))
    cc = result.saes["cc"]
    assert isinstance(cc, TopKCrosscoder)
    report = layer_report(cc, next(batches()), list(HOOKS))
    print("crosscoder:", report)
    assert report["fvu"] < 0.3 and all(v < 0.5 for v in report["fvu_per_layer"]), report
    shares = report["decoder_norm_shares"]
    # the features that fire live in one layer each, a third of them in each layer
    alive = torch.tensor(shares["single_layer_share"]).sum()
    assert alive > 0.2 and min(shares["single_layer_share"]) > 0.03, shares


def _three_layer_harvest(tmp_path, widths=(D, D, D)):
    """A fake harvest of three hooks whose rows of one token differ by the layer's offset."""
    from saeq.dev.synthetic import fake_harvest
    from saeq.platform.store import LocalStore

    store = LocalStore(tmp_path / "store")
    token_ND = torch.randn(512, D, generator=torch.Generator().manual_seed(1))
    manifest: dict = {}
    for layer, (hook, d) in enumerate(zip(HOOKS, widths, strict=True)):
        m = fake_harvest(store, JOB, token_ND[:, :d] + 10 * layer, context_len=16, hook=hook)
        manifest = m | {"hooks": manifest.get("hooks", {}) | m["hooks"]}
    return store, manifest


def test_the_feed_lays_the_hooks_of_one_token_side_by_side(tmp_path):
    from saeq.ml.activations import HarvestData

    store, manifest = _three_layer_harvest(tmp_path)
    data = HarvestData(manifest, HOOKS[0], store.get, batch_size=64, validation_tokens=128, more_hooks=HOOKS[1:])
    rows = data.validation()
    assert data.d_in == L * D and rows.shape[1] == L * D
    layers = rows.view(-1, L, D)
    torch.testing.assert_close(layers[:, 1], layers[:, 0] + 10)  # the same token at every layer
    torch.testing.assert_close(layers[:, 2], layers[:, 0] + 20)
    batch = next(iter(data.batches())).acts.view(-1, L, D)
    torch.testing.assert_close(batch[:, 2], batch[:, 0] + 20)


def test_the_feed_refuses_a_missing_or_narrower_hook_naming_the_field(tmp_path):
    from saeq.errors import InvalidSpec
    from saeq.ml.activations import HarvestData

    store, manifest = _three_layer_harvest(tmp_path, widths=(D, D, D // 2))
    for more in [(HOOKS[1], "blocks.5.hook_resid_post"), HOOKS[1:]]:
        with pytest.raises(InvalidSpec) as e:
            HarvestData(manifest, HOOKS[0], store.get, batch_size=64, validation_tokens=128, more_hooks=more)
        assert e.value.field == "spec.activations.hooks", e.value
