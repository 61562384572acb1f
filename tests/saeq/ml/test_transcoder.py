"""Transcoders: encode/decode/loss against the formulas, training on [x | y] pairs, the input
scale folded in, and the exports loading in SAELens (JumpReLU) and sparsify (TopK) with the same
outputs."""

from __future__ import annotations

import pytest
import torch

from saeq.ml.sae import SparseAutoencoder, TopKSkipTranscoder, Transcoder
from saeq.ml.training import measure
from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

ARCHS = ["topk_transcoder", "topk_skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"]


def _make(arch: str, d_in: int = 8, d_sae: int = 32, seed: int = 0, **kw) -> Transcoder:
    gen = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae, arch, k=4 if arch.startswith("topk") else None, generator=gen, **kw)
    assert isinstance(sae, Transcoder)
    with torch.no_grad():  # away from the initial zeros, so every term shows
        sae.b_enc.normal_(0, 0.1, generator=gen)
        sae.b_dec.normal_(0, 0.5, generator=gen)
        if hasattr(sae, "W_skip"):
            sae.W_skip.normal_(0, 0.2, generator=gen)
        if arch.startswith("jumprelu"):
            sae.threshold.uniform_(0.0, 0.3, generator=gen)
    return sae.eval()


def _expected(sae: Transcoder, x: torch.Tensor) -> torch.Tensor:
    """y_hat by the formula in transcoder.py's docstring, dense."""
    pre = x @ sae.W_enc + sae.b_enc  # no b_dec subtracted
    if sae.k is not None:
        vals, idx = pre.topk(sae.k, dim=1)
        acts = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    else:
        acts = pre * (pre > sae.threshold)
    y = acts @ sae.W_dec + sae.b_dec
    return y + x @ sae.W_skip.T if sae.has_skip else y


@pytest.mark.parametrize("arch", ARCHS)
def test_transcode_and_the_training_loss_follow_the_formula(arch):
    sae = _make(arch, d_out=6)
    x, y = torch.randn(20, 8), torch.randn(20, 6)
    y_hat = _expected(sae, x)
    torch.testing.assert_close(sae.transcode(x), y_hat, atol=1e-5, rtol=1e-5)
    sae.train()
    out = sae(torch.cat([x, y], dim=1))
    assert out.recon.shape == (20, 6)
    if arch.startswith("jumprelu"):  # its training codes are the inference rule's
        torch.testing.assert_close(out.recon, y_hat, atol=1e-5, rtol=1e-5)
    mse = (out.recon - y).pow(2).sum(1).mean()
    torch.testing.assert_close(out.mse, mse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.fvu, (out.recon - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    out.mse.backward()
    if hasattr(sae, "W_skip"):
        assert sae.W_skip.grad is not None and sae.W_skip.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="d_in \\+ d_out = 14"):
        sae(torch.randn(4, 8))


def test_a_skip_transcoder_learns_a_linear_map_that_a_plain_one_cannot_fit():
    """y = x @ A: the skip path fits it exactly, 4 latents of 16 cannot; y is ~100x smaller than
    x (as an MLP's output can be), which the target gain makes no matter."""
    from saeq.jobs.train import train_saes

    torch.manual_seed(0)
    A = torch.randn(16, 16) / 400
    x = torch.randn(8192, 16)
    pairs = torch.cat([x, x @ A], dim=1)
    spec = TrainSpec(
        activations=ActivationsRef(
            job_id="0" * 32, hook="blocks.0.ln2.hook_normalized", target_hook="blocks.0.hook_mlp_out"
        ),
        saes=[
            SaeConfig(name="plain", architecture="topk_transcoder", d_sae=64, k=4, lr=2e-2),
            SaeConfig(name="skip", architecture="topk_skip_transcoder", d_sae=64, k=4, lr=2e-2),
        ],
        total_tokens=256 * 30,
        batch_size=256,
        checkpoint_every_tokens=None,
    )
    batches = (pairs[(i * 256) % 8192 :][:256] for i in range(10_000))
    result = train_saes(spec, batches, validation=pairs[:2048])
    plain, skip = result.metrics["plain"], result.metrics["skip"]
    skip_sae = result.saes["skip"]
    assert isinstance(skip_sae, TopKSkipTranscoder)
    assert plain.d_in == 16 and skip_sae.W_skip.shape == (16, 16)
    assert skip.fvu < 0.1 and plain.fvu > 0.3, (skip.fvu, plain.fvu)
    # the training scale is folded in: the saved transcoder takes raw x and predicts raw y
    again = measure(result.saes["skip"], pairs[:2048])
    assert again.fvu == pytest.approx(skip.fvu, rel=1e-4)


def test_the_spec_names_target_hook_in_its_errors():
    job, hook = "0" * 32, "blocks.0.ln2.hook_normalized"
    with pytest.raises(ValueError, match="activations.target_hook"):
        TrainSpec(activations=ActivationsRef(job_id=job, hook=hook), saes=[SaeConfig(architecture="topk_transcoder")])
    with pytest.raises(ValueError, match="saes.0.architecture"):
        TrainSpec(
            activations=ActivationsRef(job_id=job, hook=hook, target_hook="blocks.0.hook_mlp_out"), saes=[SaeConfig()]
        )
    with pytest.raises(ValueError, match="hook_normalized"):
        TrainSpec(
            activations=ActivationsRef(job_id=job, hook=hook, target_hook="blocks.0.ln2.hook_normalized"),
            saes=[SaeConfig(architecture="topk_transcoder")],
        )


@pytest.mark.parametrize("arch", ["jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_saelens_loads_the_jumprelu_export_with_the_same_outputs(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _make(arch, d_out=6)
    sae.save(tmp_path, metadata={"hook_name": "blocks.0.ln2.hook_normalized", "model_name": "tiny"})
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert type(theirs).__name__ == {"jumprelu_transcoder": "JumpReLUTranscoder"}.get(arch, "JumpReLUSkipTranscoder")
    x = torch.randn(32, 8)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), sae.transcode(x), atol=1e-5, rtol=1e-5)
    back = SparseAutoencoder.load(tmp_path)
    assert isinstance(back, Transcoder) and type(back) is type(sae)
    torch.testing.assert_close(back.transcode(x), sae.transcode(x))


@pytest.mark.parametrize("arch", ["topk_transcoder", "topk_skip_transcoder"])
def test_sparsify_loads_the_topk_export_with_the_same_outputs(tmp_path, arch):
    sparsify = pytest.importorskip("sparsify")
    sae = _make(arch)
    sae.save(tmp_path, "sparsify")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path)
    assert theirs.cfg.transcode and theirs.cfg.skip_connection == (arch == "topk_skip_transcoder")
    x = torch.randn(32, 8)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).sae_out, sae.transcode(x), atol=1e-5, rtol=1e-5)
    back = SparseAutoencoder.load(tmp_path)
    assert isinstance(back, Transcoder) and type(back) is type(sae)
    torch.testing.assert_close(back.transcode(x), sae.transcode(x))
    # saeq's own file for a TopK transcoder (SAELens has none) reads back too
    sae.save(tmp_path / "saeq")
    own = SparseAutoencoder.load(tmp_path / "saeq")
    assert isinstance(own, Transcoder)
    torch.testing.assert_close(own.transcode(x), sae.transcode(x))


def test_a_harvest_of_two_hooks_feeds_pairs_token_by_token(tmp_path):
    """Rows are [input | target] of one token, sinks left out by the input hook's rule; a missing
    target hook, or one of another width, is refused naming spec.activations.target_hook."""
    from saeq.dev.synthetic import fake_harvest
    from saeq.errors import InvalidSpec
    from saeq.ml.activations import HarvestData
    from saeq.platform.store import LocalStore

    store = LocalStore(tmp_path / "store")
    x = torch.randn(512, 8)
    x[:, 0] = torch.arange(512) / 512  # tells rows apart
    manifest = fake_harvest(store, "d" * 32, x, hook="blocks.0.ln2.hook_normalized")
    target = fake_harvest(store, "d" * 32, 3 * x, hook="blocks.0.hook_mlp_out")
    manifest["hooks"] |= target["hooks"]
    data = HarvestData(
        manifest,
        "blocks.0.ln2.hook_normalized",
        store.get,
        target_hook="blocks.0.hook_mlp_out",
        batch_size=64,
        validation_tokens=64,
        prefetch_threads=0,
    )
    batch = next(data.batches()).acts
    assert batch.shape == (64, 16)
    torch.testing.assert_close(batch[:, 8:], 3 * batch[:, :8])
    assert 0 not in torch.round(batch[:, 0] * 512).long().remainder(16).tolist()  # position 0: a sink
    torch.testing.assert_close(data.validation()[:, 8:], 3 * data.validation()[:, :8])
    with pytest.raises(InvalidSpec, match="blocks.0.hook_attn_out") as e:
        HarvestData(
            manifest, "blocks.0.ln2.hook_normalized", store.get, target_hook="blocks.0.hook_attn_out", batch_size=64
        )
    assert e.value.field == "spec.activations.target_hook"
    wide = fake_harvest(store, "e" * 32, torch.randn(512, 4), hook="blocks.0.hook_mlp_out")
    manifest["hooks"] |= wide["hooks"]
    with pytest.raises(InvalidSpec, match="4 wide") as e:
        HarvestData(
            manifest, "blocks.0.ln2.hook_normalized", store.get, target_hook="blocks.0.hook_mlp_out", batch_size=64
        )
    assert e.value.field == "spec.activations.target_hook"


def test_the_harvest_captures_the_mlps_input(tiny_llama):
    """blocks.{i}.ln2.hook_normalized is what the MLP reads: mlp_out = mlp(it), token by token."""
    from saeq.jobs.harvest import harvest_activations
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import decoder_blocks
    from saeq.specs import BuiltinCorpus, HarvestSpec, ModelSpec

    hooks = ["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"]
    spec = HarvestSpec(
        model=ModelSpec(name="/tiny"),
        hooks=hooks,
        context_len=16,
        shard_tokens=128,
        batch_size=4,
        max_tokens=128,
        corpus=BuiltinCorpus(max_docs=20),
        dtype="float32",
    )
    shard = next(iter(harvest_activations(spec, tiny_llama, iter_documents(spec.corpus, seed=0))))
    x, y = (shard.tensors[h]["acts"] for h in hooks)
    with torch.inference_mode():
        torch.testing.assert_close(decoder_blocks(tiny_llama.model)[1].mlp(x), y, atol=1e-5, rtol=0)
