"""The offline demo, end to end, as a user would drive it: start a local stack, submit jobs over
HTTP with the Python client, follow their progress, print what they produced."""

from __future__ import annotations

from pathlib import Path

from saeq.client import Client
from saeq.local_stack import LocalStack, StackOptions, free_port, saeq_home
from saeq.specs import HarvestSpec


def run_demo(*, tokens: int, home: Path | None = None) -> dict:
    home = home or saeq_home() / "demo"
    with LocalStack(StackOptions(home=home, port=free_port())) as stack:
        print(f"local stack up: API {stack.url}, logs in {stack.logs}")
        client = Client(stack.url, timeout=60)
        spec = HarvestSpec(hooks=["blocks.14.hook_resid_post"], max_tokens=tokens)
        job = client.submit(spec, name="demo: harvest layer 15 of SmolLM2 on English Wikipedia")
        print(f"harvest job {job['id']}: {spec.max_tokens:,} tokens of {spec.hooks[0]} "
              f"(layer 15) from {spec.model.name} on {spec.corpus.name}")
        job = client.wait(job["id"], progress=True)
        manifest = client.manifest(job["id"])
        _print_harvest(job, manifest, stack)
        return manifest


def _print_harvest(job: dict, manifest: dict, stack: LocalStack) -> None:
    store = stack.env()["SAEQ_STORE"]
    print(f"\nharvest {job['state']} in {job['finished_at'] - job['started_at']:.0f} s "
          f"({job['progress']['figures'].get('tokens_per_s', 0):,.0f} tokens/s)")
    for hook, info in manifest["hooks"].items():
        sinks = info["sinks"]
        print(f"  {hook}: {info['n_tokens']:,} tokens x d_model {info['d_model']} in "
              f"{len(info['shards'])} shards ({info['dtype']}); attention sinks by the rule "
              f"'{sinks['rule']}': {sinks['n_position_zero']:,} at position 0 + "
              f"{sinks['n_norm_outliers']:,} norm outliers")
    print(f"manifest: {job['manifest_key']}  (store {store})")
    if store.startswith("file://"):
        print(f"          {store[len('file://'):]}/{job['manifest_key']}")
