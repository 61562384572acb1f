"""Online training: it reads what a harvest of the same fields stores, reaches the FVU of stored
training on the same tokens, resumes to the same weights without re-running skipped contexts, and
names the spec field at fault."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from saeq.errors import Cancelled, InvalidSpec
from saeq.jobs.harvest import harvest_activations
from saeq.jobs.train import TrainState, harvest_data, train_from_harvest
from saeq.jobs.train_online import OnlineData, chunk_harvest, train_online
from saeq.ml.corpus import iter_documents
from saeq.ml.shards import write_shard_bytes
from saeq.specs import ActivationsRef, BuiltinCorpus, HarvestSpec, ModelSpec, OnlineActivations, SaeConfig, TrainSpec
from saeq.specs.costs import OverQuota, check_quota, forward_passes
from saeq.specs.quotas import TeamQuota

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "blocks.1.hook_resid_post"
T = 16
CHUNK = 512  # shuffle_tokens: 32 contexts, one harvest shard per chunk
CORPUS = BuiltinCorpus(max_docs=150)


def train_fields(**kw) -> dict:
    return {
        "saes": [SaeConfig(d_sae=64, k=4)],
        "total_tokens": 12_288,
        "batch_size": 256,
        "shuffle_tokens": CHUNK,
        "validation_tokens": CHUNK,
        "checkpoint_every_tokens": None,
    } | kw


def online_spec(activations: dict | None = None, **kw) -> TrainSpec:
    fields = {"model": ModelSpec(name="/tiny"), "corpus": CORPUS, "hook": HOOK, "context_len": T, "batch_size": 8}
    return TrainSpec(
        activations=OnlineActivations(source="online", **fields | (activations or {})), **train_fields(**kw)
    )


def docs():
    return iter_documents(CORPUS, seed=0)


def stored_harvest(lm, n_shards: int) -> tuple[dict, dict[str, bytes]]:
    """A real harvest of the online spec's fields (one chunk a shard), laid out so that its held-out
    tail is the online run's held-out head (shard 0): (manifest, key -> shard bytes)."""
    spec = HarvestSpec(
        model=ModelSpec(name="/tiny"),
        corpus=CORPUS,
        hooks=[HOOK],
        max_tokens=10_000_000,
        context_len=T,
        batch_size=8,
        shard_tokens=CHUNK,
        dtype="float32",  # online activations are never rounded to a storage dtype
    )
    shards = list(itertools.islice(harvest_activations(spec, lm, docs()), n_shards))
    order = shards[1:] + shards[:1]
    files = {f"s{s.index}": write_shard_bytes(s.tensors[HOOK], s.metadata(HOOK)) for s in shards}
    entries = [{"index": i, "n_tokens": s.n_tokens, "key": f"s{s.index}"} for i, s in enumerate(order)]
    sinks = shards[0].sinks[HOOK]
    hook_entry = {
        "d_model": lm.d_model,
        "n_tokens": sum(s.n_tokens for s in shards),
        "shards": entries,
        "sinks": {"median_norm": sinks.median_norm, "norm_factor": sinks.norm_factor},
    }
    return {"context_len": T, "d_model": lm.d_model, "hooks": {HOOK: hook_entry}}, files


def test_online_training_reaches_the_fvu_of_stored_training_on_the_same_tokens(tiny_llama):
    n_shards = 25  # the held-out shard and 24 chunks of 512 tokens (31 ordinary ones a context)
    manifest, files = stored_harvest(tiny_llama, n_shards)
    stored_spec = TrainSpec(activations=ActivationsRef(job_id="a" * 32, hook=HOOK), **train_fields())
    stored_data = harvest_data(stored_spec, manifest, files.__getitem__)
    available = stored_data.train_rows().shape[0]
    total = available // 256 * 256  # one pass over the stored training tokens, less < one batch
    assert total >= 11_000

    online = online_spec(total_tokens=total)
    data = OnlineData(online, tiny_llama, docs)
    # The online held-out set is the harvest's first shard, ordinary tokens only, bit for bit.
    assert torch.equal(data.validation(), stored_data.validation())
    # ... and its rows are grouped by the same whole contexts for the figures' intervals.
    assert torch.equal(data.validation_contexts(), stored_data.validation_contexts())
    assert int(data.validation_contexts().max()) + 1 == data.n_val_contexts
    online_rows = torch.cat([b.acts for b in itertools.islice(data.batches(), total // 256)])
    stored_rows = stored_data.train_rows()
    assert online_rows.shape[0] == total and stored_rows.shape[0] == available
    assert _subset(online_rows, stored_rows)  # the same tokens, in another order

    stored_spec = TrainSpec(activations=ActivationsRef(job_id="a" * 32, hook=HOOK), **train_fields(total_tokens=total))
    stored = train_from_harvest(stored_spec, manifest, files.__getitem__)
    result = train_online(online, tiny_llama, docs)
    fvu_online, fvu_stored = result.metrics["sae0"].fvu, stored.metrics["sae0"].fvu
    assert result.tokens == stored.tokens == total
    assert result.metrics["sae0"].validation_tokens == stored.metrics["sae0"].validation_tokens
    n_contexts = stored.metrics["sae0"].intervals["fvu"].n
    assert result.metrics["sae0"].intervals["fvu"].n == n_contexts == data.n_val_contexts
    assert fvu_stored < 0.6  # a trained SAE, not a tie between two untrained ones
    assert abs(fvu_online - fvu_stored) < 0.01, (fvu_online, fvu_stored)
    assert result.data["sinks"]["validation"]["n_position0"] == CHUNK // T
    assert result.data["epochs"] == 1


def _subset(rows: torch.Tensor, of: torch.Tensor) -> bool:
    """Every row of `rows` is a row of `of` (exactly), each used at most once."""
    key = lambda t: sorted(map(tuple, t.tolist()))
    pool = key(of)
    want = key(rows)
    i = 0
    for r in want:
        while i < len(pool) and pool[i] < r:
            i += 1
        if i == len(pool) or pool[i] != r:
            return False
        i += 1
    return True


class ForwardCount:
    """Tokens the model's forward runs on (every micro-batch of the harvest)."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.tokens += kwargs["input_ids"].numel()

    def close(self) -> None:
        self.handle.remove()


def test_a_killed_online_run_resumes_to_the_same_weights_without_rerunning_skipped_contexts(tiny_llama):
    s = online_spec(
        saes=[
            SaeConfig(d_sae=64, k=4, dead_window_tokens=2048),
            SaeConfig(name="jr", architecture="jumprelu", d_sae=64),
        ],
        total_tokens=7680,
        checkpoint_every_tokens=2048,
    )
    counter = ForwardCount(tiny_llama.model)
    try:
        whole = train_online(s, tiny_llama, docs)
        whole_tokens, counter.tokens = counter.tokens, 0

        checkpoints: list[bytes] = []
        step = [0]  # should_stop is polled inside forward passes too: count steps by progress
        with pytest.raises(Cancelled):  # killed 3 steps after its checkpoint at 6,144 tokens
            train_online(
                s,
                tiny_llama,
                docs,
                on_checkpoint=lambda st: checkpoints.append(st.to_bytes()),
                on_progress=lambda p: step.__setitem__(0, p.step),
                progress_every_s=0.0,
                should_stop=lambda: step[0] == 27,
            )
        state = TrainState.from_bytes(checkpoints[-1])
        assert state.tokens == 6144 and state.data_position is not None
        chunk = state.data_position["chunk"]
        assert chunk >= 10  # ~496 ordinary tokens a chunk: 12 chunks in, mid-chunk
        counter.tokens = 0
        resumed = train_online(s, tiny_llama, docs, resume=state)
    finally:
        counter.close()

    assert resumed.tokens == whole.tokens and resumed.steps == whole.steps
    for name in whole.saes:
        for (key, a), b in zip(
            whole.saes[name].state_dict().items(), resumed.saes[name].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (name, key)
    assert resumed.metrics["sae0"].fvu == whole.metrics["sae0"].fvu
    assert resumed.data["sinks"] == whole.data["sinks"]
    # Only the held-out shard and the chunks from the checkpoint's on ran again.
    assert counter.tokens == whole_tokens - chunk * CHUNK


def test_spec_errors_name_the_field(tiny_llama):
    with pytest.raises(ValidationError) as e:  # the builtin model's depth is known at submit
        OnlineActivations(source="online", hook="blocks.30.hook_resid_post")
    assert e.value.errors()[0]["loc"] == ("hook",) and "0..29" in str(e.value)
    with pytest.raises(ValidationError) as e:
        TrainSpec.model_validate({"activations": {"source": "online", "context_len": 1}})
    assert e.value.errors()[0]["loc"] == ("activations", "online", "context_len")
    # A spec without `source` still reads a harvest, and is stored as it was.
    ref = TrainSpec.model_validate({"activations": {"job_id": "a" * 32}})
    assert ref.activations.source == "harvest" and "source" not in ref.model_dump()["activations"]

    with pytest.raises(InvalidSpec) as run_error:  # the tiny model has blocks 0..2
        train_online(online_spec({"hook": "blocks.3.hook_mlp_out"}), tiny_llama, docs)
    assert run_error.value.field == "spec.activations.hook"
    with pytest.raises(InvalidSpec) as run_error:  # it has 256 positions
        train_online(online_spec({"context_len": 300}), tiny_llama, docs)
    assert run_error.value.field == "spec.activations.context_len"


def test_a_corpus_too_short_is_refused_naming_the_budget(tiny_llama):
    few = BuiltinCorpus(max_docs=6)

    def run(**kw):
        train_online(online_spec({"corpus": few}, **kw), tiny_llama, lambda: iter_documents(few, seed=0))

    with pytest.raises(InvalidSpec) as e:  # six articles hold fewer than 100,000 held-out tokens
        run(validation_tokens=100_000)
    assert e.value.field == "spec.validation_tokens"
    with pytest.raises(InvalidSpec) as e:  # they hold the 512 held-out ones, and a few batches
        run(total_tokens=10_000_000)
    assert e.value.field == "spec.total_tokens"


def test_chunks_are_whole_contexts_of_at_least_shuffle_tokens():
    harvest, per_chunk = chunk_harvest(online_spec(shuffle_tokens=1000))
    assert harvest.shard_tokens == 63 * T and per_chunk == 1  # 1000 rounded up to whole contexts
    assert harvest.hooks == [HOOK] and harvest.context_len == T and harvest.batch_size == 8
    big, per_chunk = chunk_harvest(online_spec(shuffle_tokens=10_000_000))
    assert big.shard_tokens <= 4_194_304 and per_chunk * big.shard_tokens >= 10_000_000


def test_the_online_forward_pass_counts_against_the_batch_quota():
    spec = online_spec({"batch_size": 64}, total_tokens=4096)
    assert ("spec.activations.batch_size", 64 * T) in forward_passes(spec)
    with pytest.raises(OverQuota) as e:
        check_quota(spec, TeamQuota(max_batch_tokens=512), team="t", d_in=32)
    assert e.value.field == "spec.activations.batch_size"
    check_quota(spec, TeamQuota(max_batch_tokens=1024), team="t", d_in=32)  # 64 x 16 fits
