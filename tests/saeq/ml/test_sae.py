"""The SAE module: sparse kernels against a dense reference, decoder norm, files in and out."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from saeq.ml.sae import SparseAutoencoder
from tests.helpers import import_peer

D, M = 16, 64


pytestmark = pytest.mark.usefixtures("one_thread")


def random_sae(arch: str, *, k: int = 5, seed: int = 0) -> SparseAutoencoder:
    """An SAE with every tensor perturbed away from its initial value, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(D, M, arch, k=k if arch in ("topk", "batchtopk") else None, generator=g)
    with torch.no_grad():
        sae.W_enc.add_(0.1 * torch.randn(D, M, generator=g))
        sae.W_dec.mul_(torch.rand(M, 1, generator=g) + 0.5)
        sae.b_enc.copy_(0.3 * torch.randn(M, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(0.5 * torch.rand(M, generator=g))
    return sae.eval()


def inputs(n: int = 40, seed: int = 1) -> torch.Tensor:
    return 3 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def dense_reference(sae, x, arch, dead, aux_k):
    """The same forward pass with dense tensors and plain autograd."""
    p = {n: t.detach().clone().requires_grad_() for n, t in sae.named_parameters()}
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    if arch == "topk":
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(sae.k, dim=1).indices, True)
    else:  # batchtopk: the B x k largest of the batch
        keep = torch.zeros(pre.numel(), dtype=torch.bool)
        keep[F.relu(pre).flatten().topk(x.shape[0] * sae.k).indices] = True
        keep = keep.view_as(pre)
    recon = (F.relu(pre) * keep) @ p["W_dec"] + p["b_dec"]
    aux_v, aux_i = pre.masked_fill(~dead, -torch.inf).topk(aux_k, dim=1)
    aux = torch.zeros_like(pre).scatter_(1, aux_i, F.relu(aux_v)) @ p["W_dec"]
    loss = (x - recon).pow(2).sum(1).mean() + aux.pow(2).sum(1).mean()
    loss.backward()
    return recon, {n: t.grad for n, t in p.items()}


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_kernels_match_dense_autograd(arch):
    sae = random_sae(arch).train()
    x = inputs()
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::3] = True
    out = sae(x, dead=dead, aux_k=4)
    aux = sae.decode_sparse(out.aux_codes, bias=False)
    (out.mse + aux.pow(2).sum(1).mean()).backward()
    recon, grads = dense_reference(sae, x, arch, dead, 4)
    torch.testing.assert_close(out.recon, recon, atol=1e-5, rtol=1e-5)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=2e-5, rtol=1e-5, msg=name)
    assert float(out.l0) <= sae.k + 1e-6 and out.aux_codes.latents.unique().tolist() == [
        i for i in out.aux_codes.latents.unique().tolist() if dead[i]
    ]


def test_encode_sparse_agrees_with_dense_encode():
    for arch in ("topk", "batchtopk", "jumprelu", "relu"):
        sae, x = random_sae(arch), inputs()
        dense = sae.encode(x)
        codes = sae.encode_sparse(x)
        torch.testing.assert_close(codes.to_dense(M), dense)
        torch.testing.assert_close(sae.decode_sparse(codes), sae.decode(dense), atol=1e-5, rtol=1e-5)
        if arch == "topk":
            assert ((dense > 0).sum(1) <= 5).all()


def test_decoder_gradient_has_no_component_along_its_rows():
    sae = random_sae("topk").train()
    sae.normalize_decoder_()
    out = sae(inputs())
    out.mse.backward()
    sae.remove_parallel_grad_()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-4
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(M))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_folding_the_training_scale_makes_an_sae_for_raw_inputs(arch):
    sae, x, scale = random_sae(arch), inputs(), 7.5
    on_scaled = sae.decode(sae.encode(x * scale)) / scale
    sae.fold_input_scale_(scale)
    torch.testing.assert_close(sae.decode(sae.encode(x)), on_scaled, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_saelens_loads_the_export_and_computes_the_same(arch, tmp_path):
    sae_lens = import_peer("sae_lens")
    sae, x = random_sae(arch), inputs()
    sae.save(tmp_path, metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny"})
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    expected = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard"}
    assert theirs.cfg.architecture() == expected[arch]
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)
    back = SparseAutoencoder.load(tmp_path)
    assert (back.architecture, back.k) == (arch, sae.k)
    for (name, a), b in zip(sae.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # lossless


def test_sparsify_loads_the_export_and_computes_the_same(tmp_path):
    import_peer("sparsify")
    from sparsify import SparseCoder

    sae, x = random_sae("topk"), inputs()
    sae.save(tmp_path, "sparsify", metadata={"hook_name": "blocks.1.hook_resid_post"})
    theirs = SparseCoder.load_from_disk(tmp_path)
    with torch.no_grad():
        enc = theirs.encode(x)
        dense = torch.zeros(x.shape[0], M).scatter_(1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(dense, sae.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x).sae_out, sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)
    back = SparseAutoencoder.load(tmp_path)
    for (name, a), b in zip(sae.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="TopK"):
        random_sae("relu").save(tmp_path / "relu", "sparsify")


def test_loads_saelens_configs_written_by_saelens_itself(tmp_path):
    """An SAELens TopK SAE trained with rescale_acts_by_decoder_norm, saved as SAELens saves it
    for training (unfolded), reads back as the same function."""
    sae_lens = import_peer("sae_lens")
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    theirs = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=M, k=5))
    with torch.no_grad():
        theirs.W_dec.mul_(torch.rand(M, 1) + 0.5)
        theirs.b_dec.normal_()
    theirs.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["rescale_acts_by_decoder_norm"] is True
    ours, x = SparseAutoencoder.load(tmp_path), inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs(x), atol=1e-4, rtol=1e-4)
    assert sae_lens is not None


def test_each_architecture_is_its_own_class_found_by_name():
    from saeq.ml.sae import BatchTopKSae, JumpReluSae, ReluSae, TopKSae

    built = {arch: type(random_sae(arch)) for arch in ("topk", "batchtopk", "jumprelu", "relu")}
    assert built == {"topk": TopKSae, "batchtopk": BatchTopKSae, "jumprelu": JumpReluSae, "relu": ReluSae}
    with pytest.raises(ValueError, match=r"unknown architecture 'gated'; one of \('topk', 'batchtopk'"):
        SparseAutoencoder(D, M, "gated")
    with pytest.raises(ValueError, match="TopKSae is architecture 'topk', not 'relu'"):
        TopKSae(D, M, "relu", k=4)


def test_a_plugin_architecture_trains_saves_and_loads_as_its_own_class(tmp_path):
    from saeq.specs import SAE_ARCHITECTURES, SaeConfig, load_plugins
    from tests.plugins.toy_sae_model import CAP, ToySae

    assert load_plugins("tests.plugins.toy_sae") == ["tests.plugins.toy_sae"]
    load_plugins("tests.plugins.toy_sae")  # loading twice is harmless
    assert "toy" in SAE_ARCHITECTURES and SaeConfig(architecture="toy").architecture == "toy"
    with pytest.raises(
        ValueError, match="k applies to architecture topk or batchtopk or matryoshka_batchtopk( or [a-z_]+)*, not toy"
    ):
        SaeConfig(architecture="toy", k=4)
    sae = SparseAutoencoder(D, M, "toy", generator=torch.Generator().manual_seed(0))
    assert type(sae) is ToySae and sae.k is None
    x = inputs()
    out = sae(x)
    out.mse.backward()
    assert sae.W_enc.grad is not None and float(out.codes.detach().max()) <= CAP
    sae.save(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "saeq:toy"
    back = SparseAutoencoder.load(tmp_path)
    assert type(back) is ToySae
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), sae.encode(x))
