"""A cancel stops a forward pass at the next block, and a user's batch runs in micro-batches that
give the activations of the whole batch."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import Cancelled
from saeq.jobs.harvest import harvest_activations
from saeq.ml.corpus import iter_documents
from saeq.ml.models import decoder_blocks
from saeq.ml.stopping import micro_batches, stop_between_blocks
from saeq.specs import BuiltinCorpus, HarvestSpec, ModelSpec

HOOK = "blocks.2.hook_resid_post"


def _spec(**kw) -> HarvestSpec:
    return HarvestSpec(
        model=ModelSpec(name="/tiny"),
        hooks=[HOOK],
        context_len=16,
        shard_tokens=256,
        batch_size=16,
        max_tokens=512,
        corpus=BuiltinCorpus(max_docs=40),
        **kw,
    )


def _harvest(spec, lm, **kw):
    return list(harvest_activations(spec, lm, iter_documents(spec.corpus, seed=spec.seed), **kw))


def test_micro_batches_cover_the_batch_in_whole_contexts():
    assert list(micro_batches(10, 16, max_tokens=64)) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(micro_batches(3, 1000, max_tokens=64)) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_micro_batched_activations_equal_the_whole_batch(tiny_llama, one_thread):
    whole = _harvest(_spec(), tiny_llama, micro_batch_tokens=1 << 20)
    micro = _harvest(_spec(), tiny_llama, micro_batch_tokens=48)  # 3 contexts a forward pass
    for a, b in zip(whole, micro, strict=True):
        torch.testing.assert_close(b.tensors[HOOK]["acts"], a.tensors[HOOK]["acts"], atol=1e-5, rtol=0)
        assert torch.equal(b.tensors[HOOK]["token_ids"], a.tensors[HOOK]["token_ids"])


def test_a_cancel_mid_forward_stops_before_the_next_block(tiny_llama, one_thread):
    blocks = decoder_blocks(tiny_llama.model)
    ran, stop = [], []
    # The flag turns true while block 0 computes: blocks 1 and 2 must never run.
    handles = [blocks[0].mlp.register_forward_hook(lambda *a: stop.append(True))]
    handles += [b.block.register_forward_hook(lambda *a, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    try:
        with pytest.raises(Cancelled):
            _harvest(_spec(), tiny_llama, should_stop=lambda: bool(stop))
    finally:
        for h in handles:
            h.remove()
    assert ran == [0]
    # The checks leave with the job: the cached model runs the next job unhindered.
    assert len(_harvest(_spec(), tiny_llama)) == 2


def test_stop_between_blocks_checks_every_block_attention_and_mlp(tiny_llama):
    polls = []
    with stop_between_blocks(tiny_llama.model, lambda: polls.append(1) or False, "x"), torch.inference_mode():
        tiny_llama.model(torch.zeros(1, 4, dtype=torch.long))
    assert len(polls) == 3 * len(decoder_blocks(tiny_llama.model))
