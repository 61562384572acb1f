"""Data parallelism for SAE training with torch.distributed: a process group over loopback (NCCL
on CUDA, gloo on CPU) and the collectives one training step needs, so that `world` processes,
each holding 1/world of every global batch, take exactly the steps one process would take on it.

Where the group's rendezvous is (address, port) is passed in: nothing here reads the environment.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it), for the group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


@dataclass(frozen=True)
class DataGroup:
    """This process's place among `world` data-parallel ranks. Rank r trains on rows r::world of
    every global batch; sums over the batch are divided by the GLOBAL batch size, so the
    all-reduced (summed) gradients equal one process's on the whole batch."""

    rank: int
    world: int

    def shard(self, x_BD: Tensor) -> Tensor:
        """This rank's rows of a global batch: (B, d) -> (ceil((B - rank) / world), d)."""
        return x_BD[self.rank :: self.world]

    def local_weight(self, local_rows: int, global_rows: int) -> float:
        """Factor of a mean over this rank's rows that makes the summed means the global mean."""
        return local_rows / global_rows

    def sum_(self, t: Tensor) -> Tensor:
        """All-reduce (sum) `t` in place across the ranks; -> t."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sum_grads_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient across ranks, flattened into one all-reduce (one call
        instead of one per tensor: the step's latency)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,)
        self.sum_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flag: bool, device: str) -> bool:
        """True on every rank when `flag` is true on any: a decision all ranks take together (to
        stop), so that none waits in a collective the others left."""
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        return bool(self.sum_(t).item() > 0)


def join_group(rank: int, world: int, *, addr: str, port: int, device: str, timeout_s: float) -> DataGroup:
    """Join the process group at tcp://addr:port as `rank` of `world`; a rank that does not
    arrive, or a collective that a dead rank never joins, fails after `timeout_s` instead of
    hanging. On CUDA the rank's device becomes the current one (NCCL needs it)."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(
        backend_for(device),
        init_method=f"tcp://{addr}:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return DataGroup(rank, world)


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
