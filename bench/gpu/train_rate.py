"""TopK SAE training tokens/s on one device: saeq's trainer beside sparsify's SparseCoder, same data.

d_in 576, 16,384 latents, k=32, batches of 4,096 rows already resident on the device (the trainer's
rate, not the feed's: bench/feed.py measures that). saeq runs train_saes with the TrainSpec defaults
(its Adam, AuxK, decoder normalisation, autocast on CUDA); sparsify runs its SparseCoder forward
(fvu + auxk) and backward with torch Adam at the same lr, as its Trainer's inner step does. Each is
warmed up, then timed with the device synchronised. Prints `FIGURE name value unit` lines.

Usage: python bench/gpu/train_rate.py [--device cuda] [--steps 200] [--d-sae 16384] [--batch 4096]
"""

from __future__ import annotations

import argparse
import time

import torch

D_IN, K = 576, 32


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def saeq_rate(data_ND: torch.Tensor, d_sae: int, batch: int, steps: int, device: str) -> float:
    from saeq.jobs.train import train_saes
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    def run(n_steps: int) -> float:
        spec = TrainSpec(
            activations=ActivationsRef(job_id="0" * 32, hook="blocks.14.hook_resid_post"),
            total_tokens=n_steps * batch,
            batch_size=batch,
            saes=[SaeConfig(name="topk", architecture="topk", d_sae=d_sae, k=K)],
        )
        rows = data_ND.shape[0] // batch
        batches = (data_ND[(i % rows) * batch : (i % rows + 1) * batch] for i in range(n_steps))
        sync(device)
        t0 = time.perf_counter()
        train_saes(spec, batches, device=device)
        sync(device)
        return time.perf_counter() - t0

    run(max(steps // 10, 2))  # warm-up: kernels, allocator
    return steps * batch / run(steps)


def sparse_coder():
    """sparsify's SparseCoder and its config class. Its package __init__ imports its Trainer, which
    needs `datasets` (with pyarrow: too big to carry); the coder itself does not."""
    try:
        from sparsify import SaeConfig, SparseCoder
    except ImportError:
        import importlib.util
        import sys
        import types

        found = importlib.util.find_spec("sparsify")
        if found is None or not found.submodule_search_locations:
            raise
        package = types.ModuleType("sparsify")
        package.__path__ = list(found.submodule_search_locations)
        sys.modules["sparsify"] = package
        from sparsify.config import SparseCoderConfig as SaeConfig
        from sparsify.sparse_coder import SparseCoder
    return SaeConfig, SparseCoder


def sparsify_rate(data_ND: torch.Tensor, d_sae: int, batch: int, steps: int, device: str) -> float:
    SaeConfig, SparseCoder = sparse_coder()
    sae = SparseCoder(D_IN, SaeConfig(num_latents=d_sae, k=K), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (d_sae / 2**14) ** 0.5)  # sparsify's default lr rule
    rows = data_ND.shape[0] // batch
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def run(n_steps: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for i in range(n_steps):
            x = data_ND[(i % rows) * batch : (i % rows + 1) * batch]
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                out = sae(x, dead_mask=dead)
            (out.fvu + out.auxk_loss / 32).backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sae.set_decoder_norm_to_unit_norm()
        sync(device)
        return time.perf_counter() - t0

    run(max(steps // 10, 2))
    return steps * batch / run(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description="TopK SAE training tokens/s: saeq beside sparsify")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--d-sae", type=int, default=16_384)
    ap.add_argument("--batch", type=int, default=4_096)
    ap.add_argument("--peers", default="saeq,sparsify")
    args = ap.parse_args()

    torch.manual_seed(0)
    n_rows = args.batch * 16
    # Activations with a planted low-rank part, like a residual stream (not isotropic noise).
    basis_RD = torch.randn(64, D_IN)
    data_ND = (torch.randn(n_rows, 64) @ basis_RD + 0.3 * torch.randn(n_rows, D_IN)).to(args.device)
    rates = {}
    for name in args.peers.split(","):
        fn = {"saeq": saeq_rate, "sparsify": sparsify_rate}[name]
        try:
            rates[name] = fn(data_ND, args.d_sae, args.batch, args.steps, args.device)
        except ImportError as e:
            print(f"# {name} not run: {e}")
            continue
        where = args.device.split(":")[0]
        print(f"FIGURE train_tokens_per_s_{name}_{where} {rates[name]:.0f} tokens/s", flush=True)
    if "saeq" in rates and "sparsify" in rates:
        print(f"FIGURE train_saeq_over_sparsify {rates['saeq'] / rates['sparsify']:.2f} x")


if __name__ == "__main__":
    main()
