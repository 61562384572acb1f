"""The harvest yields the activations a direct forward pass gives, in resumable shards."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from saeq.errors import Cancelled, InvalidSpec
from saeq.jobs.harvest import harvest_activations, pack_contexts, slice_ranges
from saeq.ml.corpus import iter_documents
from saeq.ml.models import decoder_blocks, load_model
from saeq.ml.shards import read_shard, read_shard_metadata, write_shard_bytes
from saeq.ml.sinks import sink_mask
from saeq.specs import BuiltinCorpus, HarvestSpec, ModelSpec
from tests.saeq.conftest import tiny_lm

T = 16  # context length of the tiny runs: 8 contexts per 128-token shard


def make_spec(hooks, **kw) -> HarvestSpec:
    kw = {
        "context_len": T,
        "shard_tokens": 128,
        "batch_size": 3,
        "max_tokens": 600,
        "corpus": BuiltinCorpus(max_docs=40),
        "dtype": "float32",  # fp32 on request: these tests compare with a direct fp32 forward pass
    } | kw
    return HarvestSpec(model=ModelSpec(name="/tiny"), hooks=hooks, **kw)


def harvest(spec, lm, **kw):
    return list(harvest_activations(spec, lm, iter_documents(spec.corpus, seed=spec.seed), **kw))


def all_sites(block: int) -> list[str]:
    return [f"blocks.{block}.hook_{s}" for s in ("resid_pre", "attn_out", "mlp_out", "resid_post")]


def test_activations_equal_a_direct_forward_pass(tiny_llama):
    lm = tiny_llama
    spec = make_spec(all_sites(1) + all_sites(2))
    for shard in harvest(spec, lm):
        t = shard.tensors
        ids_CT = t["blocks.1.hook_resid_post"]["token_ids"].reshape(-1, T).long()
        with torch.inference_mode():
            hs = lm.model(ids_CT, output_hidden_states=True).hidden_states  # n_layers+1 x (C, T, D)
        flat = [h.reshape(-1, lm.d_model) for h in hs]
        acts = {h: tensors["acts"] for h, tensors in t.items()}
        torch.testing.assert_close(acts["blocks.1.hook_resid_pre"], flat[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(acts["blocks.1.hook_resid_post"], flat[2], atol=1e-5, rtol=0)
        torch.testing.assert_close(acts["blocks.2.hook_resid_pre"], flat[2], atol=1e-5, rtol=0)
        # The last hidden state is after the final norm; block 2's output is before it.
        final_norm = lm.model.model.norm(acts["blocks.2.hook_resid_post"])
        torch.testing.assert_close(final_norm, flat[3], atol=1e-5, rtol=0)
        for b in (1, 2):
            pre, attn, mlp, post = (acts[h] for h in all_sites(b))
            # What each sublayer adds to the stream, recomputed by hand from the block's weights.
            block = decoder_blocks(lm.model)[b].block
            mid = pre + attn
            torch.testing.assert_close(mlp, block.mlp(block.post_attention_layernorm(mid)), atol=1e-5, rtol=0)
            torch.testing.assert_close(post, mid + mlp, atol=1e-5, rtol=0)
        norms = t["blocks.1.hook_resid_post"]["norms"]
        torch.testing.assert_close(norms, flat[2].norm(dim=-1), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_other_architectures(tiny_tokenizer, arch):
    lm = tiny_lm(tiny_tokenizer, arch)
    spec = make_spec(
        [
            "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_pre",
            "blocks.1.hook_attn_out",
            "blocks.1.hook_mlp_out",
            "blocks.1.hook_resid_post",
        ],
        max_tokens=128,
    )
    (shard,) = harvest(spec, lm)
    acts = {h: tensors["acts"] for h, tensors in shard.tensors.items()}
    ids_CT = shard.tensors["blocks.1.hook_resid_post"]["token_ids"].reshape(-1, T).long()
    with torch.inference_mode():
        hs = lm.model(ids_CT, output_hidden_states=True).hidden_states
    for block in (0, 1):
        torch.testing.assert_close(
            acts[f"blocks.{block}.hook_resid_post"], hs[block + 1].reshape(-1, 32), atol=1e-5, rtol=0
        )
    # Sequential (gpt2) or parallel (neox) residual: the block adds attn_out + mlp_out either way.
    torch.testing.assert_close(
        acts["blocks.1.hook_resid_pre"] + acts["blocks.1.hook_attn_out"] + acts["blocks.1.hook_mlp_out"],
        acts["blocks.1.hook_resid_post"],
        atol=1e-5,
        rtol=0,
    )


def test_shard_layout_and_budget(tiny_llama):
    spec = make_spec(["blocks.0.hook_resid_post"], max_tokens=600)
    shards = harvest(spec, tiny_llama)
    # 600 tokens -> 38 whole contexts of 16 (608 tokens): shards of 8 contexts, the last of 6.
    assert [s.index for s in shards] == [0, 1, 2, 3, 4]
    assert [s.n_tokens for s in shards] == [128] * 4 + [96]
    t = shards[0].tensors["blocks.0.hook_resid_post"]
    assert {k: (v.dtype, tuple(v.shape)) for k, v in t.items()} == {
        "acts": (torch.float32, (128, 32)),
        "token_ids": (torch.int32, (128,)),
        "doc_ids": (torch.int32, (128,)),
        "positions": (torch.int32, (128,)),
        "norms": (torch.float32, (128,)),
    }
    assert t["positions"].tolist() == list(range(T)) * 8
    # Contexts are consecutive slices of the packed stream, in order.
    stream = [tok for s in shards for tok in s.tensors["blocks.0.hook_resid_post"]["token_ids"].tolist()]
    packed = pack_contexts(
        iter_documents(spec.corpus, seed=0),
        tiny_llama.tokenizer,
        context_len=T,
        prepend_bos=False,
        doc_separator="\n\n",
    )
    assert stream == [tok for ids, _ in list(packed)[:38] for tok in ids]


def test_packing_marks_separators_and_bos(tiny_llama):
    tok = tiny_llama.tokenizer
    docs = list(iter_documents(BuiltinCorpus(max_docs=5), seed=3))
    contexts = list(pack_contexts(docs, tok, context_len=T, prepend_bos=True, doc_separator="\n\n"))
    ids = [i for c, _ in contexts for i in c[1:]]
    owners = [o for _, c in contexts for o in c[1:]]
    assert all(c[0] == tok.bos_token_id and o[0] == -1 for c, o in contexts)
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    expected, expected_owners = [], []
    for k, d in enumerate(docs):
        if k:
            expected += sep
            expected_owners += [-1] * len(sep)
        d_ids = tok(d.text, add_special_tokens=False)["input_ids"]
        expected += d_ids
        expected_owners += [d.doc_id] * len(d_ids)
    n = len(ids)  # the incomplete last context is dropped
    assert ids == expected[:n] and owners == expected_owners[:n]
    assert len(expected) - n < T - 1


def test_resume_skips_without_running_the_model(tiny_llama):
    spec = make_spec(["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"])
    full = harvest(spec, tiny_llama)
    medians = {h: s.median_norm for h, s in full[0].sinks.items()}

    calls = []
    handle = tiny_llama.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        resumed = harvest(spec, tiny_llama, start_shard=2, median_norms=medians)
    finally:
        handle.remove()
    assert len(calls) == 3 + 3 + 2  # batches of 3 in shards 2, 3 (8 contexts) and 4 (6 contexts)
    assert [s.index for s in resumed] == [2, 3, 4]
    for a, b in zip(full[2:], resumed, strict=False):
        for h in spec.hooks:
            assert write_shard_bytes(a.tensors[h], a.metadata(h)) == write_shard_bytes(b.tensors[h], b.metadata(h))


def test_slices_write_the_shards_of_a_single_harvest(tiny_llama):
    # 600 tokens in contexts of 16 and shards of 8 contexts: shards 0..4, the last of 6 contexts.
    spec = make_spec(["blocks.1.hook_resid_post"], slices=3)
    assert [list(r) for r in slice_ranges(spec)] == [[0], [1, 2], [3, 4]]
    single = harvest(spec, tiny_llama)
    medians = {h: s.median_norm for h, s in single[0].sinks.items()}
    sliced = [
        shard
        for r in slice_ranges(spec)
        for shard in harvest(spec, tiny_llama, start_shard=r.start, stop_shard=r.stop, median_norms=medians)
    ]
    assert [s.index for s in sliced] == [0, 1, 2, 3, 4]
    h = spec.hooks[0]
    for a, b in zip(single, sliced, strict=True):
        assert write_shard_bytes(a.tensors[h], a.metadata(h)) == write_shard_bytes(b.tensors[h], b.metadata(h))


def test_slices_beyond_the_corpus_are_empty(tiny_llama):
    # A budget far past the 40 documents: the corpus ends inside the first slices.
    spec = make_spec(["blocks.1.hook_resid_post"], max_tokens=1_000_000, slices=8)
    single = harvest(spec, tiny_llama)
    r = slice_ranges(spec)[-1]
    assert len(single) < r.start and harvest(spec, tiny_llama, start_shard=r.start, stop_shard=r.stop) == []


def test_more_slices_than_shards_is_an_invalid_spec():
    with pytest.raises(ValidationError) as e:
        make_spec(["blocks.1.hook_resid_post"], slices=6)  # 5 shards
    assert e.value.errors()[0]["loc"] == ("slices",)


def test_forward_stops_after_the_deepest_block(tiny_llama):
    fired = []
    blocks = decoder_blocks(tiny_llama.model)
    handles = [
        blocks[2].block.register_forward_hook(lambda *a: fired.append("block2")),
        tiny_llama.model.lm_head.register_forward_hook(lambda *a: fired.append("head")),
    ]
    try:
        harvest(make_spec(["blocks.1.hook_resid_post", "blocks.0.hook_attn_out"]), tiny_llama)
    finally:
        for h in handles:
            h.remove()
    assert fired == []


def test_progress_and_cancellation(tiny_llama):
    done = []
    with pytest.raises(Cancelled):  # polled between micro-batches and blocks: cancelled after 4 batches
        harvest(
            make_spec(["blocks.0.hook_resid_post"]),
            tiny_llama,
            should_stop=lambda: len(done) == 4,
            on_batch=done.append,
        )
    assert done == [48, 96, 128, 176]  # batches of 3 contexts, shards of 8


def test_hook_beyond_the_model_is_an_invalid_spec(tiny_llama):
    with pytest.raises(InvalidSpec) as e:
        harvest(make_spec(["blocks.0.hook_resid_post", "blocks.3.hook_resid_post"]), tiny_llama)
    assert e.value.field == "spec.hooks[1]"
    assert "3 blocks" in e.value.message


def test_bfloat16_storage_keeps_fp32_norms(tiny_llama):
    fp32 = harvest(make_spec(["blocks.1.hook_resid_post"], max_tokens=128), tiny_llama)[0]
    assert HarvestSpec.model_fields["dtype"].default == "bfloat16"  # what a harvest stores unless asked
    bf16 = harvest(make_spec(["blocks.1.hook_resid_post"], max_tokens=128, dtype="bfloat16"), tiny_llama)[0]
    a, b = fp32.tensors["blocks.1.hook_resid_post"], bf16.tensors["blocks.1.hook_resid_post"]
    assert b["acts"].dtype == torch.bfloat16
    assert torch.equal(b["acts"], a["acts"].bfloat16())
    assert torch.equal(b["norms"], a["norms"])


def test_shard_bytes_round_trip_with_sink_counts(tiny_llama):
    spec = make_spec(["blocks.1.hook_resid_post"], max_tokens=128, sink_norm_factor=1.1)
    (shard,) = harvest(spec, tiny_llama)
    h = "blocks.1.hook_resid_post"
    data = write_shard_bytes(shard.tensors[h], shard.metadata(h))
    back = read_shard(data)
    assert all(torch.equal(back[k], v) for k, v in shard.tensors[h].items())
    meta = read_shard_metadata(data)
    s = shard.sinks[h]
    assert meta["hook"] == h and int(meta["n_tokens"]) == 128 and int(meta["n_position0"]) == 8
    mask = sink_mask(back["positions"], back["norms"], float(meta["median_norm"]), 1.1)
    assert int(mask.sum()) == s.n_sinks == 8 + int(meta["n_outliers"])
    assert 0 < s.n_outliers < 60  # a factor of 1.1 catches some of the random model's tokens


def test_sink_mask_rule():
    positions = torch.tensor([0, 1, 2, 3, 0, 1])
    norms = torch.tensor([1.0, 10.0, 60.0, 49.0, 1.0, 51.0])
    assert sink_mask(positions, norms, 10.0, 5.0).tolist() == [True, False, True, False, True, True]


@pytest.mark.smollm2
def test_smollm2_block14_matches_hidden_states_and_shows_the_sink(smollm2_cache_dir):
    lm = load_model(ModelSpec(), cache_dir=smollm2_cache_dir)
    spec = HarvestSpec(
        hooks=["blocks.14.hook_resid_post"],
        max_tokens=512,
        shard_tokens=512,
        batch_size=4,
        corpus=BuiltinCorpus(max_docs=20),
        dtype="float32",  # fp32 on request: compared with the fp32 hidden states at 1e-5
    )
    (shard,) = harvest(spec, lm)
    t = shard.tensors["blocks.14.hook_resid_post"]
    ids_CT = t["token_ids"].reshape(-1, 128).long()
    with torch.inference_mode():
        hs15 = lm.model(ids_CT, output_hidden_states=True).hidden_states[15]  # (4, 128, 576)
    torch.testing.assert_close(t["acts"], hs15.reshape(-1, 576), atol=1e-5, rtol=0)
    s = shard.sinks["blocks.14.hook_resid_post"]
    assert 100 < s.median_norm < 250  # FIELD-NOTES: ~157
    assert t["norms"][t["positions"] == 0].min() > 50 * s.median_norm  # ~23,800 at position 0
    assert s.n_position0 == 4


def test_context_longer_than_the_model_is_an_invalid_spec(tiny_llama):
    with pytest.raises(InvalidSpec) as e:  # the tiny llama has 256 positions
        harvest(make_spec(["blocks.0.hook_resid_post"], context_len=512, shard_tokens=512), tiny_llama)
    assert e.value.field == "spec.context_len"
