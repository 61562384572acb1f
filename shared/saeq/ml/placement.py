"""Where a model's weights go: whole on the job's device, or (on CUDA, when they exceed that GPU's
free memory) in bf16 spread over the node's GPUs by accelerate's `device_map`; decided from the
config's parameter count before any weight is read. A model that fits nowhere is OutOfMemory
naming the spec field to change; so is an allocation failure while loading or running it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saeq.errors import OutOfMemory

GIB = 1 << 30
HEADROOM = 1.25
"""Weights x this must fit in free memory: a forward's activations, the CUDA context and the
allocator's slack live beside them."""

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_TORCH_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda only


@dataclass(frozen=True)
class Placement:
    """How load_model puts a model on its device(s)."""

    dtype: str
    """Dtype the weights are loaded in (the spec's, or bfloat16 when spread over GPUs)."""
    device_map: str | None
    """None: the whole model on the job's device; "auto": accelerate spreads its blocks."""
    max_memory: dict[int, int] | None
    """Bytes accelerate may fill on each GPU index (only with a device_map)."""
    weight_bytes: int | None
    """Parameter count x the loaded dtype's size (None off CUDA, where it is not computed)."""

    def provenance(self, requested_dtype: str) -> dict[str, object]:
        """What the harvest manifest records about the placement (model provenance)."""
        out: dict[str, object] = {"dtype": self.dtype}
        if self.weight_bytes is not None:
            out["weight_bytes"] = self.weight_bytes
        if self.device_map is not None:
            out.update(device_map=self.device_map, n_gpus=len(self.max_memory or {}))
        if self.dtype != requested_dtype:
            out["dtype_requested"] = requested_dtype
        return out


def parameter_count(config) -> int:
    """Parameters of the causal LM a transformers config describes, counted on the meta device
    (nothing allocated, nothing read); tied embeddings are counted once."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def plan_placement(n_params: int, dtype: str, device: str, free_bytes: dict[int, int]) -> Placement:
    """The placement of a model of `n_params` parameters asked for in `dtype` on `device`.

    `free_bytes` is each visible GPU's free memory (torch.cuda.mem_get_info), empty off CUDA. On
    CPU, and on a GPU the weights fit (with HEADROOM), nothing changes. Otherwise the model is
    loaded in bfloat16 (a float32 request halves) with device_map="auto" over the GPUs, each
    filled up to its free memory / HEADROOM; when even that is too small, OutOfMemory."""
    size = n_params * _DTYPE_BYTES[dtype]
    if not device.startswith("cuda"):
        return Placement(dtype, None, None, size)
    target = torch.device(device).index or 0
    if size * HEADROOM <= free_bytes.get(target, 0):
        return Placement(dtype, None, None, size)
    spread_dtype = "bfloat16" if dtype == "float32" else dtype
    spread_size = n_params * _DTYPE_BYTES[spread_dtype]
    budget = {i: int(free / HEADROOM) for i, free in sorted(free_bytes.items())}
    if spread_size > sum(budget.values()):
        raise OutOfMemory(
            f"the model has {n_params / 1e9:.2f}B parameters: {spread_size / GIB:.1f} GiB in {spread_dtype}, "
            f"{spread_size * HEADROOM / GIB:.1f} GiB with room for a forward pass, but the worker's "
            f"{len(free_bytes)} GPU(s) have {sum(free_bytes.values()) / GIB:.1f} GiB free; pick a smaller "
            "model or a worker pool with more GPU memory",
            field="spec.model.name",
        )
    return Placement(spread_dtype, "auto", budget, spread_size)


def cuda_free_bytes(device: str) -> dict[int, int]:
    """Free memory of each visible GPU, {} off CUDA."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {}
    return {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: torch's OutOfMemoryError (CUDA), MemoryError, or the CPU allocator's
    RuntimeError (torch raises a plain RuntimeError when host memory runs out)."""
    if isinstance(e, (_TORCH_OOM, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def loading_out_of_memory(e: BaseException, dtype: str, device: str) -> OutOfMemory:
    """The OutOfMemory for an allocation failure while loading a model in `dtype` onto `device`."""
    where = "GPU" if device.startswith("cuda") else "host"
    if dtype == "float32":
        return OutOfMemory(
            f"out of {where} memory loading the model in float32; bfloat16 needs half: set model.dtype "
            f"to bfloat16 ({type(e).__name__}: {e})",
            field="spec.model.dtype",
        )
    return OutOfMemory(
        f"out of {where} memory loading the model in {dtype}; pick a smaller model ({type(e).__name__}: {e})",
        field="spec.model.name",
    )


def reset_gpu_memory_peak(model: torch.nn.Module) -> None:
    """Start counting peak GPU memory afresh (on every GPU the model lives on) for this job."""
    for index in _cuda_indices(model):
        torch.cuda.reset_peak_memory_stats(index)


def gpu_memory_figures(model: torch.nn.Module) -> dict[str, float]:
    """Progress figures of the GPU memory a job used: the peak allocated since the last reset,
    summed over the GPUs the model lives on, and their count; {} for a model off CUDA."""
    indices = _cuda_indices(model)
    if not indices:
        return {}
    peak = sum(torch.cuda.max_memory_allocated(i) for i in indices)
    return {"gpu_max_allocated_gib": peak / GIB, "gpus": float(len(indices))}


def _cuda_indices(model: torch.nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
