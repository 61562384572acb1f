"""A training asked to yield (a preemption) stops after the current step with a checkpoint AT that
step, and a run resumed from it ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import itertools

import pytest
import torch

from saeq.errors import Preempted
from saeq.jobs.train import TrainState, train_from_harvest
from saeq.specs import SaeConfig
from tests.saeq.jobs.test_train import harvest_with_sinks, spec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_yielded_run_checkpoints_at_its_step_and_resumes_to_the_same_weights(tmp_path):
    store, manifest = harvest_with_sinks(tmp_path)
    s = spec(SaeConfig(architecture="topk", d_sae=64, k=3), total_tokens=20_480, batch_size=256)
    whole = train_from_harvest(s, manifest, store.get)

    checkpoints: list[TrainState] = []
    asks = itertools.count()
    with pytest.raises(Preempted) as yielded:  # asked before step 38: none of the periodic kind (there are none)
        train_from_harvest(
            s, manifest, store.get, on_checkpoint=checkpoints.append, should_yield=lambda: next(asks) == 37
        )
    assert len(checkpoints) == 1
    state = checkpoints[0]
    assert (state.step, state.tokens) == (37, 37 * 256)
    assert yielded.value.figures == {"tokens": 37 * 256, "step": 37}

    # Asked again at once on resuming: nothing trained since, so nothing new is saved.
    again: list[TrainState] = []
    with pytest.raises(Preempted):
        train_from_harvest(s, manifest, store.get, resume=state, on_checkpoint=again.append, should_yield=lambda: True)
    assert again == []

    resumed = train_from_harvest(s, manifest, store.get, resume=TrainState.from_bytes(state.to_bytes()))
    assert (resumed.tokens, resumed.steps) == (whole.tokens, whole.steps)
    for (key, a), b in zip(
        whole.saes["sae0"].state_dict().items(), resumed.saes["sae0"].state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
