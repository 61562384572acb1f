"""Matryoshka BatchTopK: its loss and threshold are SAELens's, each prefix reconstructs alone and the
first group learns the frequent (parent) features, the spec's groups are checked, SAELens loads it."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from saeq.errors import InvalidSpec
from saeq.jobs.train import train_saes
from saeq.ml.sae import MatryoshkaBatchTopKSae, SparseAutoencoder
from saeq.ml.training import build_trainees
from saeq.specs import ActivationsRef, SaeConfig, TrainSpec
from tests.helpers import import_peer

D, M, K = 16, 64, 5
GROUPS = [8, 16, 40]  # prefix widths 8, 24, 64
ARCH = "matryoshka_batchtopk"

pytestmark = pytest.mark.usefixtures("one_thread")


def random_sae(seed: int = 0) -> MatryoshkaBatchTopKSae:
    g = torch.Generator().manual_seed(seed)
    sae = MatryoshkaBatchTopKSae(D, M, k=K, groups=GROUPS, generator=g)
    with torch.no_grad():
        sae.W_enc.add_(0.1 * torch.randn(D, M, generator=g))
        sae.b_enc.copy_(0.3 * torch.randn(M, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
    assert isinstance(sae, MatryoshkaBatchTopKSae)  # __new__ is typed as the base class
    return sae


def inputs(n: int = 40, seed: int = 1) -> torch.Tensor:
    return 3 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_a_training_step_has_saelens_loss_gradients_and_threshold():
    """One step on the same weights and batch: SAELens's MatryoshkaBatchTopKTrainingSAE (its
    decoder rows at unit norm, as saeq keeps them) gives the same loss, gradients and threshold."""
    import_peer("sae_lens")
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import TrainStepInput

    ours, x = random_sae().train(), inputs()
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D, d_sae=M, k=K, matryoshka_widths=[8, 24, 64], rescale_acts_by_decoder_norm=False
    )
    theirs = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(theirs, name).copy_(getattr(ours, name))
    step = theirs.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
    out = ours(x)
    prefix_loss = ours.loss_terms(x, out)
    assert prefix_loss is not None
    torch.testing.assert_close(out.mse, step.losses["mse_loss"])
    inner = step.losses["inner_mse_loss_8"] + step.losses["inner_mse_loss_24"]
    torch.testing.assert_close(prefix_loss, inner)
    (out.mse + prefix_loss).backward()
    step.loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.threshold, theirs.topk_threshold.float().expand(M))
    assert float(ours.threshold[0]) > 0  # the EMA moved off its start


def hierarchical(n: int, seed: int = 7) -> torch.Tensor:
    """8 parent features (each fires on 25% of tokens) with 7 children each; a child fires only
    with its parent (half the time, one child at a time), so parents carry most of the variance."""
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(64, 32, generator=g)
    F /= F.norm(dim=1, keepdim=True)
    parents = (torch.rand(n, 8, generator=g) < 0.25).float()  # (n, 8)
    child = torch.randint(0, 7, (n, 8), generator=g)
    has_child = parents * (torch.rand(n, 8, generator=g) < 0.5).float()
    codes = torch.zeros(n, 64)
    codes[:, :8] = parents * (1.5 + torch.rand(n, 8, generator=g))
    children = 8 + 7 * torch.arange(8) + child  # (n, 8) the child's feature index
    codes.scatter_(1, children, has_child * (0.5 + 0.5 * torch.rand(n, 8, generator=g)))
    return codes @ F


def prefix_fvus(sae, x: torch.Tensor) -> list[float]:
    """The held-out FVU of each prefix alone (inference codes)."""
    with torch.no_grad():
        acts, var = sae.encode(x), float((x - x.mean(0)).pow(2).sum())
        return [float((x - acts[:, :e] @ sae.W_dec[:e] - sae.b_dec).pow(2).sum()) / var for e in (8, 24, 128)]


def train(cfg: SaeConfig, x: torch.Tensor):
    spec = TrainSpec(
        activations=ActivationsRef(job_id="d" * 32, hook="blocks.1.hook_resid_post"),
        saes=[cfg],
        total_tokens=150_000,
        batch_size=512,
        checkpoint_every_tokens=None,
    )

    def batches():
        for i in itertools.count():
            s = (i * 512) % (x.shape[0] - 512)
            yield x[s : s + 512]

    return train_saes(spec, batches())


def test_each_prefix_reconstructs_and_the_first_group_learns_the_parents():
    x = hierarchical(24_000)
    train_x, held_out = x[:-4096], x[-4096:]
    groups = [8, 16, 104]
    mat = train(SaeConfig(architecture=ARCH, d_sae=128, k=4, matryoshka_groups=groups), train_x)
    plain = train(SaeConfig(architecture="batchtopk", d_sae=128, k=4), train_x)
    ours, theirs = prefix_fvus(mat.saes["sae0"], held_out), prefix_fvus(plain.saes["sae0"], held_out)
    print(f"prefix FVUs (8, 24, 128 latents): matryoshka {ours}, batchtopk {theirs}")
    assert ours[0] > ours[1] > ours[2] and ours[0] < 0.5  # 8 latents alone already reconstruct
    assert theirs[0] > 0.8  # a plain dictionary's first 8 latents are no better than any 8
    assert ours[2] < 0.2 and theirs[2] < 0.2
    # The threshold estimated in training keeps about k latents per token at inference.
    with torch.no_grad():
        l0 = float((mat.saes["sae0"].encode(held_out) > 0).float().sum(1).mean())
    assert 2.5 < l0 < 6, l0


def test_the_spec_names_matryoshka_groups_in_its_errors():
    def error(**kw) -> str:
        with pytest.raises(ValidationError) as e:
            SaeConfig(**kw)
        (err,) = e.value.errors()
        assert err["loc"] == ("matryoshka_groups",) or err["loc"][0] == "matryoshka_groups", err
        return err["msg"]

    assert "needs matryoshka_groups" in error(architecture=ARCH, d_sae=64)
    assert "sum to 60, not d_sae=64" in error(architecture=ARCH, d_sae=64, matryoshka_groups=[20, 40])
    assert "greater than 0" in error(architecture=ARCH, d_sae=64, matryoshka_groups=[0, 64])
    assert "applies to architecture matryoshka_batchtopk, not batchtopk" in error(
        architecture="batchtopk", matryoshka_groups=[64]
    )
    assert SaeConfig(architecture=ARCH, d_sae=64, matryoshka_groups=GROUPS).matryoshka_groups == GROUPS
    # With d_sae from the expansion factor the sum is checked when d_in is known.
    cfg = SaeConfig(architecture=ARCH, expansion_factor=4, matryoshka_groups=[8, 8])
    spec = TrainSpec(activations=ActivationsRef(job_id="d" * 32, hook="blocks.1.hook_resid_post"), saes=[cfg])
    with pytest.raises(InvalidSpec, match="sum to 16, not d_sae=64") as e:
        build_trainees(spec, ["sae0"], D, "cpu", None)
    assert e.value.field == "spec.saes[0].matryoshka_groups"


def test_saelens_loads_the_export_and_computes_the_same(tmp_path):
    sae_lens = import_peer("sae_lens")
    sae, x = random_sae().eval(), inputs()
    with torch.no_grad():
        sae.threshold.fill_(0.4)
    sae.save(tmp_path, metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny"})
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.architecture() == "jumprelu"  # as SAELens saves its Matryoshka BatchTopK
    assert theirs.cfg.metadata.training_architecture == ARCH
    assert theirs.cfg.metadata.training_architecture_details["matryoshka_widths"] == [8, 24, 64]
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)
    back = SparseAutoencoder.load(tmp_path)  # built by name, with the groups from the metadata
    assert isinstance(back, MatryoshkaBatchTopKSae) and (back.groups, back.k) == (GROUPS, K)
    for (name, a), b in zip(sae.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # lossless


def parent_detection(sae, model, held_out: list) -> tuple[float, float]:
    """Mean over the hierarchy's parents of (recall, F1) of each parent's closest latent (decoder
    |cos|) as a detector of that parent firing: a parent absorbed into its children's latents
    is missed whenever a child fires."""
    from saeq.checks.recovery import abs_cosines

    parents = model.parents_H
    latent_P = abs_cosines(sae.W_dec.detach(), model.features_FD[parents]).argmax(0)  # (P,)
    x, codes = (torch.cat(t) for t in zip(*held_out, strict=True))
    with torch.no_grad():
        on_NP, truth_NP = sae.encode(x)[:, latent_P] > 0, codes[:, parents] > 0
    tp = (on_NP & truth_NP).sum(0).float()
    precision, recall = tp / on_NP.sum(0).clamp_min(1), tp / truth_NP.sum(0).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-9)
    return float(recall.mean()), float(f1.mean())


def test_matryoshka_latents_keep_the_parents_that_batchtopk_absorbs():
    """8 parents x 4 mutually exclusive children (saeq.ml.synthetic), d_sae = the 40 features, k 3:
    plain BatchTopK folds a parent into its children's latents (its own latent misses it when a
    child fires); Matryoshka's first group of 8 must reconstruct alone, so its parent latents fire
    with their parents. Measured on 6 generator seeds (200 steps of 512): parent recall +0.14 to
    +0.19, parent F1 +0.02 to +0.11, every seed. SynthSAEBench's MCC and F1 over all latents did
    not follow on this toy (-0.03 to +0.01 and -0.05 to +0.02): printed, not pinned."""
    from saeq.checks.recovery import score_recovery
    from saeq.ml.synthetic import SyntheticConfig, SyntheticModel

    cfg = SyntheticConfig(
        n_features=40, d_model=40, zipf_exponent=0.5, max_prob=0.4, min_prob=0.01, n_parents=8, n_children=4,
        magnitude_std=0.3, noise_std=0.01, seed=1,
    )  # fmt: skip
    model = SyntheticModel(cfg)
    held_out = [(b.acts_BD, b.codes_BF) for b in model.batches(4096, 2, seed=99)]
    figures = {}
    for arch, groups in (("batchtopk", None), (ARCH, [8, 32])):
        spec = TrainSpec(
            activations=ActivationsRef(job_id="d" * 32, hook="blocks.1.hook_resid_post"),
            saes=[SaeConfig(architecture=arch, d_sae=40, k=3, matryoshka_groups=groups)],
            total_tokens=200 * 512,
            batch_size=512,
            checkpoint_every_tokens=None,
        )
        sae = train_saes(spec, (b.acts_BD for b in model.batches(512, 200, seed=2))).saes["sae0"]
        r = score_recovery(sae.encode, sae.decode, sae.W_dec, model.features_FD, held_out)
        figures[arch] = (*parent_detection(sae, model, held_out), r.mcc, r.f1)
    print("parent recall, parent F1, MCC, F1:", figures)
    (plain_recall, plain_f1, *_), (mat_recall, mat_f1, *_) = figures["batchtopk"], figures[ARCH]
    assert mat_recall > plain_recall + 0.05
    assert mat_f1 >= plain_f1
