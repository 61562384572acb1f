"""Training: each architecture finds a planted dictionary; a killed run resumes to the same
weights; progress and result figures; sinks left out of training and metrics, and counted."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from saeq.errors import Cancelled, InvalidSpec
from saeq.jobs.train import TrainState, measure, train_from_harvest, train_saes
from saeq.platform.store import LocalStore
from saeq.specs import SaeConfig, TrainSpec
from tests.saeq.conftest import fake_harvest, planted_dictionary

JOB = "d" * 32
HOOK = "blocks.1.hook_resid_post"


pytestmark = pytest.mark.usefixtures("one_thread")


def spec(*saes: SaeConfig, **kw) -> TrainSpec:
    kw = {
        "total_tokens": 200_000,
        "batch_size": 512,
        "checkpoint_every_tokens": None,
        "validation_tokens": 2048,
        "shuffle_tokens": 4096,
    } | kw
    return TrainSpec(activations={"job_id": JOB, "hook": HOOK}, saes=list(saes), **kw)


def cycle(x: torch.Tensor, batch: int):
    for i in itertools.count():
        start = (i * batch) % (x.shape[0] - batch)
        yield x[start : start + batch]


@pytest.mark.parametrize(
    "cfg",
    [
        SaeConfig(architecture="topk", d_sae=128, k=3),
        SaeConfig(architecture="batchtopk", d_sae=128, k=3),
        SaeConfig(architecture="jumprelu", d_sae=128, l0_coefficient=0.5),
        SaeConfig(architecture="relu", d_sae=128, l1_coefficient=3.0),
    ],
    ids=lambda c: c.architecture,
)
def test_each_architecture_recovers_a_planted_dictionary(cfg):
    x, features = planted_dictionary(n_features=64, d=32, n_active=3, n=40_000)
    s = spec(cfg)
    result = train_saes(s, cycle(x[:-4096], s.batch_size), validation=x[-4096:])
    sae, m = result.saes["sae0"], result.metrics["sae0"]
    W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best_cos = (features @ W.T).max(dim=1).values  # each true feature's closest latent
    assert (best_cos > 0.9).float().mean() > 0.8, (best_cos.median(), m)
    assert m.fvu < 0.5 and m.l0 < 12 and m.validation_tokens == 4096


def test_several_saes_train_from_one_read_and_report_progress():
    x, _ = planted_dictionary(n=20_000)
    s = spec(
        SaeConfig(name="narrow", architecture="topk", d_sae=64, k=3),
        SaeConfig(name="wide", architecture="topk", d_sae=256, k=3, lr=1e-3),
        total_tokens=40_960,
    )
    reads, progress = [], []

    def batches():
        for b in cycle(x[:-2048], s.batch_size):
            reads.append(1)
            yield b

    result = train_saes(s, batches(), validation=x[-2048:], on_progress=progress.append, progress_every_s=0.0)
    assert len(reads) == result.steps == 80  # each batch read once, for both SAEs
    assert set(result.saes) == {"narrow", "wide"}
    assert result.saes["wide"].d_sae == 256 and result.saes["narrow"].d_sae == 64
    last = progress[-1]
    assert last.tokens == result.tokens == 40_960 and last.step == 80
    assert set(last.saes["wide"]) == {"loss", "mse", "fvu", "l0", "lr", "dead_fraction", "dense_fraction"}
    assert last.saes["wide"]["lr"] < 1e-3  # decayed at the end (peak 1e-3)
    assert progress[0].saes["narrow"]["fvu"] > last.saes["narrow"]["fvu"]
    assert last.tokens_per_s > 0
    assert result.to_dict()["saes"]["wide"]["d_sae"] == 256


def test_fvu_is_the_unexplained_share_of_the_variance_about_the_mean():
    x, _ = planted_dictionary(n=3000)
    result = train_saes(spec(SaeConfig(d_sae=64, k=3), total_tokens=20_480), cycle(x, 512), validation=x)
    sae = result.saes["sae0"]
    with torch.no_grad():
        err = (x - sae.decode(sae.encode(x))).pow(2).sum()
    m = measure(sae, x)
    assert m.fvu == pytest.approx(float(err / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    assert m.mse == pytest.approx(float(err / x.shape[0]), rel=1e-4)


def harvest_with_sinks(tmp_path):
    """A fake harvest of a planted dictionary whose position-0 tokens are 200x larger."""
    x, _ = planted_dictionary(n=16 * 1024, seed=2)
    x[::16] *= 200
    store = LocalStore(tmp_path / "store")
    return store, fake_harvest(store, JOB, x, context_len=16, shard_tokens=1024, hook=HOOK)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    store, manifest = harvest_with_sinks(tmp_path)
    s = spec(
        SaeConfig(architecture="topk", d_sae=64, k=3, dead_window_tokens=4096),
        SaeConfig(name="jr", architecture="jumprelu", d_sae=64),
        total_tokens=30_720,
        batch_size=256,
        checkpoint_every_tokens=5120,
    )
    whole = train_from_harvest(s, manifest, store.get)

    checkpoints: list[bytes] = []
    steps = itertools.count()
    with pytest.raises(Cancelled):  # killed after 70 steps, 10 after its last checkpoint
        train_from_harvest(
            s,
            manifest,
            store.get,
            on_checkpoint=lambda st: checkpoints.append(st.to_bytes()),
            should_stop=lambda: next(steps) == 70,
        )
    state = TrainState.from_bytes(checkpoints[-1])
    assert state.tokens == 15_360 and len(checkpoints) == 3
    resumed = train_from_harvest(s, manifest, store.get, resume=state)

    assert resumed.tokens == whole.tokens and resumed.steps == whole.steps
    for name in whole.saes:
        for (key, a), b in zip(
            whole.saes[name].state_dict().items(), resumed.saes[name].state_dict().values(), strict=False
        ):
            assert torch.equal(a, b), (name, key)
    assert resumed.metrics["sae0"].fvu == whole.metrics["sae0"].fvu


def test_sinks_are_left_out_of_training_and_metrics_and_counted(tmp_path):
    store, manifest = harvest_with_sinks(tmp_path)
    s = spec(SaeConfig(d_sae=64, k=3), total_tokens=20_480)
    result = train_from_harvest(s, manifest, store.get)
    data = result.data
    assert data["sinks"]["train"]["n_position0"] == (16 * 1024 - 2048) // 16
    assert data["sinks"]["validation"]["n_position0"] == 2048 // 16
    assert data["validation_tokens"] == 2048 - 128 == result.metrics["sae0"].validation_tokens
    assert data["train_tokens_available"] == 14_336 - 896
    assert data["epochs"] == pytest.approx(20_480 / 13_440)
    m = result.metrics["sae0"]
    assert (m.sinks_excluded_train, m.sinks_excluded_validation) == (896, 128)
    # The scale was set by ordinary tokens (mean norm ~2.2 -> sqrt(32)), not by the sinks.
    assert 1.5 < result.input_scale < 4
    assert result.metrics["sae0"].fvu < 0.8


def test_impossible_requests_are_refused():
    with pytest.raises(ValueError, match="k=9 exceeds d_sae=8"):
        SaeConfig(d_sae=8, k=9)
    with pytest.raises(ValidationError) as unknown:
        SaeConfig(architecture="gated")
    assert unknown.value.errors()[0]["loc"] == ("architecture",) and "topk" in str(unknown.value)
    with pytest.raises(ValueError, match="l1_coefficient applies to architecture relu"):
        SaeConfig(architecture="topk", l1_coefficient=3.0)
    with pytest.raises(ValueError, match="duplicate name"):
        spec(SaeConfig(name="a"), SaeConfig(name="a"))
    with pytest.raises(InvalidSpec) as e:  # k fits no 2 x 4 latents: found once d_in is known
        train_saes(spec(SaeConfig(expansion_factor=2, k=32)), cycle(torch.randn(2048, 4), 512))
    assert e.value.field == "spec.saes[0].k"
