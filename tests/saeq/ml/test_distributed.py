"""The data-parallel pieces: ranks' shares of a batch cover it exactly once, the shares' weights
make the global mean, the flattened gradient all-reduce puts every gradient back in its place, and
the rendezvous port is free."""

from __future__ import annotations

import socket

import pytest
import torch

from saeq.ml.distributed import DataGroup, backend_for, free_port, join_group, leave_group


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_shares_cover_a_batch_once_and_weigh_to_its_mean(world):
    x_BD = torch.arange(61 * 2, dtype=torch.float32).reshape(61, 2)
    shares = [DataGroup(r, world).shard(x_BD) for r in range(world)]
    rows = sorted(int(v) for s in shares for v in s[:, 0])
    assert rows == sorted(int(v) for v in x_BD[:, 0])
    mean = torch.stack([DataGroup(r, world).local_weight(len(s), 61) * s.mean(0) for r, s in enumerate(shares)]).sum(0)
    assert torch.allclose(mean, x_BD.mean(0))


def test_summed_gradients_go_back_to_their_parameters():
    port = free_port()
    with socket.socket() as s:  # free: it can be bound again
        s.bind(("127.0.0.1", port))
    group = join_group(0, 1, addr="127.0.0.1", port=port, device="cpu", timeout_s=30)
    try:
        params = [
            torch.nn.Parameter(torch.zeros(3, 2)),
            torch.nn.Parameter(torch.zeros(5)),
            torch.nn.Parameter(torch.zeros(1)),
        ]
        grads = [torch.randn(3, 2), torch.randn(5), None]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone() if g is not None else None
        group.sum_grads_(params)  # one rank: the sum is the gradient itself, each in its own place
        for p, g in zip(params, grads, strict=True):
            assert p.grad is None if g is None else p.grad is not None and torch.equal(p.grad, g)
        assert group.any(True, "cpu") and not group.any(False, "cpu")
    finally:
        leave_group()
    assert backend_for("cuda:1") == "nccl" and backend_for("cpu") == "gloo"
