"""Live inspect latency through the real stack (issue 21, acceptance 5: p50 under 300 ms for a
64-token text on this CPU): a local stack (API, Redis, one worker serving the `steer` queue), a
harvest and a training of an SAE on it, then `POST /v1/features/inspect` of one 64-token text,
warm, N times one after another; the client's wall time per request (HTTP, Redis queue, worker)
and the worker's own `seconds`. Run by `python bench/steer.py --inspect N` (see there)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = (
    "The river crossing grew into a city of bridges, markets and schools. Merchants came by boat "
    "from the coast, and the old ferry gave way to a stone bridge with seven arches. By the time "
    "the railway arrived, the town had a university, two cathedrals and a harbour that froze in "
    "the coldest winters, when children skated from one bank to the other."
)


def _run(client, spec) -> dict:
    job = client.wait(client.submit(spec)["id"], timeout=3_600)
    if job["state"] != "succeeded":
        raise SystemExit(f"{job['kind']} job {job['id']} {job['state']}: {job['error']}")
    return job


def text_of(client, train_id: str, n_tokens: int) -> str:
    """A text the model reads as exactly `n_tokens` tokens: TEXT's first ones, as the worker cut them."""
    tokens = client.inspect(train_id, TEXT, top_k=1)["tokens"]
    if len(tokens) < n_tokens:
        raise SystemExit(f"the bench's text is {len(tokens)} tokens, fewer than --inspect-tokens {n_tokens}")
    text = "".join(t["text"] for t in tokens[:n_tokens])
    if len(client.inspect(train_id, text, top_k=1)["tokens"]) != n_tokens:
        raise SystemExit(f"TEXT's first {n_tokens} tokens, joined, read as another count: change TEXT")
    return text


def inspect_latency(n: int, n_tokens: int = 64, top_k: int = 5, *, smoke: bool = False) -> None:
    """Print p50/p90/p99 of N warm inspect requests of an `n_tokens`-token text, with the load."""
    with tempfile.TemporaryDirectory(prefix="saeq-bench-inspect-") as tmp:
        wall, worker, loads, d_sae = _measure(Path(tmp), n, n_tokens, top_k, smoke)
    print(
        f"live inspect: {'tiny Llama (smoke)' if smoke else 'SmolLM2-135M-Instruct'}, SAE topk d_sae={d_sae}, "
        f"a {n_tokens}-token text, top_k={top_k}; {n} warm requests one after another through the API, Redis "
        f"and one worker; {os.cpu_count()} CPUs, load average {loads[0]:.1f} before, {loads[1]:.1f} after"
    )
    for name, xs in (("client wall", wall), ("worker seconds", worker)):
        p50, p90, p99 = np.percentile(np.array(xs) * 1000, [50, 90, 99])
        print(
            f"  {name:15s} p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  p99 {p99:7.1f} ms  "
            f"(mean {statistics.mean(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"
        )


def _measure(home: Path, n: int, n_tokens: int, top_k: int, smoke: bool):
    """(client wall times, worker seconds, (load before, after), d_sae) of n warm requests."""
    from saeq.client.client import Client
    from saeq.dev.local_stack import LocalStack, StackOptions, free_port
    from saeq.specs import ActivationsRef, HarvestSpec, ModelSpec, SaeConfig, TrainSpec

    hook, model, sae = "blocks.14.hook_resid_post", ModelSpec(), SaeConfig(expansion_factor=8, k=32)
    roots = None
    if smoke:
        from tests.tiny_model import save_tiny_llama

        tiny = save_tiny_llama(home / "tiny-llama", n_layers=2, d_model=32)
        hook, model, sae, roots = "blocks.0.hook_resid_post", ModelSpec(name=str(tiny)), SaeConfig(k=4), [str(home)]
    harvest_spec = HarvestSpec(model=model, hooks=[hook], max_tokens=8_192, context_len=128, shard_tokens=4_096)
    with LocalStack(StackOptions(home=home, port=free_port(), local_path_roots=roots)) as stack:
        client = Client(stack.url, api_key=stack.admin_key, timeout=300)
        client.set_quota(client.me()["team"], live_per_minute=100_000, live_prompt_tokens=2_048)  # N in a row
        harvest = _run(client, harvest_spec)
        train_spec = TrainSpec(
            activations=ActivationsRef(job_id=harvest["id"], hook=hook),
            saes=[sae],
            total_tokens=8 * 4_096,
            validation_tokens=1_024,
            checkpoint_every_tokens=None,
        )
        train = _run(client, train_spec)
        text = text_of(client, train["id"], n_tokens)  # also warms the worker: model, SAE, tokenizer
        for _ in range(3):
            client.inspect(train["id"], text, top_k=top_k)
        load0 = os.getloadavg()
        wall, worker = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            out = client.inspect(train["id"], text, top_k=top_k)
            wall.append(time.perf_counter() - t0)
            worker.append(out["seconds"])
            assert len(out["tokens"]) == n_tokens  # the same work every time
        load1 = os.getloadavg()
    d_sae = sae.d_sae or sae.expansion_factor * (32 if smoke else 576)
    return wall, worker, (load0[0], load1[0]), d_sae
