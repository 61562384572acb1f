"""The activation feed's throughput beside the raw read bandwidth of the same shards, one run.

On the demo's harvest (blocks.14.hook_resid_post of SmolLM2, 16 fp32 shards of 16,384 tokens x
576, from ~/.saeq/demo/store; synthetic shards of the same size when it is absent) and its bf16
twin (acts cast, shards rewritten), for each source: a local store dir, S3 (SeaweedFS started on
loopback as the tests do) and RAM (a dict of the shard bytes):
  raw   every shard read once through the same reader, serially and from 4 threads
  cold  the feed's first epoch (every shard read, decoded, made resident)
  warm  the next epochs (the rows resident: no reads)
and, for reference, the CPU trainer's step rate (TopK d=576, 4,608 latents, k=32, batch 4,096).
The consumer only dequeues batches. `--device cuda` delivers them on the GPU (GPU-resident when the
rows fit, else through pinned buffers) and times the trainer there.
`--drop-caches` (Linux, root) empties the page cache before each local read, so the local rows are
the disk's ("fp32 disk"); without it they read the page cache the raw read just filled.
`--shards N` feeds a synthetic harvest of N shards instead: the cold epoch of 16 shards is ~0.4 s
idle, of which the first batch (a whole chunk of 4 shards read first) is a third.
Usage: python bench/feed.py [--epochs 3] [--no-s3] [--device cpu|cuda] [--drop-caches] [--shards N]
       [--rounds R]
Smallest check (seconds): python bench/feed.py --smoke (3 synthetic shards, one warm epoch)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers, for SeaweedFS

HOOK = "blocks.14.hook_resid_post"
BATCH, SHUFFLE, VALIDATION = 4_096, 65_536, 16_384


def demo_harvest() -> tuple[dict, Callable[[str], bytes]] | None:
    """The demo's fp32 harvest at HOOK with 16 shards, if one is in ~/.saeq/demo/store."""
    from saeq.platform.store import LocalStore

    root = Path.home() / ".saeq" / "demo" / "store"
    for path in sorted(root.glob("jobs/*/manifest.json")):
        m = json.loads(path.read_text())
        hook = m.get("hooks", {}).get(HOOK)
        if m.get("kind") == "harvest" and hook and len(hook["shards"]) == 16 and m.get("dtype") == "float32":
            return m, LocalStore(root).get
    return None


def synthetic_harvest(store_dir: Path, n_shards: int = 16) -> tuple[dict, Callable[[str], bytes]]:
    """`n_shards` fp32 shards of 16,384 tokens x 576 (contexts of 256), laid out as a harvest's."""
    from saeq import keys
    from saeq.ml.shards import write_shard_bytes
    from saeq.platform.store import LocalStore

    store, job, ctx, n, d = LocalStore(store_dir), "f" * 32, 256, 16_384, 576
    g = torch.Generator().manual_seed(0)
    shards = []
    for i in range(n_shards):
        acts = torch.randn(n, d, generator=g) * 3
        positions = torch.arange(ctx, dtype=torch.int32).repeat(n // ctx)
        acts[positions == 0] *= 100
        tensors = {
            "acts": acts,
            "token_ids": torch.zeros(n, dtype=torch.int32),
            "doc_ids": torch.zeros(n, dtype=torch.int32),
        }
        tensors |= {"positions": positions, "norms": acts.norm(dim=1)}
        key = keys.harvest_shard(job, HOOK, i)
        store.put(key, write_shard_bytes(tensors, {"hook": HOOK}))
        shards.append({"index": i, "n_tokens": n, "key": key})
    median = float(torch.tensor(3 * 24.0))  # ~ norm of a 576-d N(0, 9) row
    sinks = {"median_norm": median, "norm_factor": 5.0}
    hook = {"d_model": d, "n_tokens": n_shards * n, "shards": shards, "sinks": sinks}
    manifest = {"kind": "harvest", "d_model": d, "context_len": ctx, "n_tokens": n_shards * n, "dtype": "float32"}
    return manifest | {"hooks": {HOOK: hook}}, store.get


def bf16_twin(manifest: dict, read: Callable[[str], bytes], store_dir: Path) -> tuple[dict, Callable[[str], bytes]]:
    """The same harvest with its acts cast to bf16, shards rewritten into a temp store."""
    from saeq.ml.shards import read_shard, read_shard_metadata, write_shard_bytes
    from saeq.platform.store import LocalStore

    store = LocalStore(store_dir)
    for s in manifest["hooks"][HOOK]["shards"]:
        data = read(s["key"])
        tensors = read_shard(data)
        tensors["acts"] = tensors["acts"].to(torch.bfloat16)
        store.put(s["key"], write_shard_bytes(tensors, read_shard_metadata(data)))
    return manifest | {"dtype": "bfloat16"}, store.get


def raw(read: Callable[[str], bytes | bytearray], keys: list[str], threads: int) -> tuple[float, int]:
    """(seconds, bytes) to read every shard once; from RAM, to copy every shard once."""
    if isinstance(getattr(read, "__self__", None), dict):  # RAM: a read is a lookup, time a copy
        shards = read
        read = lambda k: bytearray(shards(k))  # one copy of the shard
    t = time.perf_counter()
    if threads == 1:
        n = sum(len(read(k)) for k in keys)
    else:
        with ThreadPoolExecutor(threads) as pool:
            n = sum(len(b) for b in pool.map(read, keys))
    return time.perf_counter() - t, n


def feed(manifest: dict, read: Callable[[str], bytes], epochs: int, device: str) -> tuple[float, float, int, float]:
    """(cold tokens/s over the first epoch, warm tokens/s over the next `epochs`, tokens an epoch,
    seconds to the first batch: the first chunk's shards are all read before it is shuffled)."""
    from saeq.ml.activations import HarvestData

    data = HarvestData(
        manifest,
        HOOK,
        read,
        batch_size=BATCH,
        seed=0,
        shuffle_tokens=SHUFFLE,
        validation_tokens=VALIDATION,
        device=device,
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n_epoch = data.n_train_rows // BATCH  # batches in (a little under) one epoch, sinks out
    batches = data.batches()
    t0 = time.perf_counter()
    next(batches)
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(n_epoch - 1):
        next(batches)
    sync()
    t1 = time.perf_counter()
    for _ in range(n_epoch * epochs):
        next(batches)
    sync()
    t2 = time.perf_counter()
    batches.close()
    return n_epoch * BATCH / (t1 - t0), n_epoch * epochs * BATCH / (t2 - t1), n_epoch * BATCH, first_s


def ceilings(manifest: dict, read: Callable[[str], bytes], rounds: int = 3) -> tuple[float, float]:
    """What this machine does right now, in tokens/s of acts, on one resident shard: a batch's
    plain memcpy (clone of 4,096 consecutive rows) and a batch's index_select of 4,096 sorted
    random rows, on the calling thread, no feed around them."""
    from saeq.ml.shards import decode_shard

    key = manifest["hooks"][HOOK]["shards"][0]["key"]
    acts = decode_shard(read(key), key)["acts"]
    n = acts.shape[0] // BATCH * BATCH
    idx = [torch.randperm(acts.shape[0])[:BATCH].sort().values for _ in range(n // BATCH)]
    t = time.perf_counter()
    for _ in range(rounds):
        for i in range(0, n, BATCH):
            acts[i : i + BATCH].clone()
    copy = rounds * n / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(rounds):
        for j in idx:
            acts.index_select(0, j)
    return copy, rounds * n / (time.perf_counter() - t)


def trainer_rate(device: str, steps: int = 6) -> float:
    """Tokens/s of one TopK SAE (d=576, 4,608 latents, k=32) at batch 4,096 on `device`."""
    from saeq.jobs.train import train_saes
    from saeq.specs import SaeConfig, TrainSpec
    from saeq.specs.train import ActivationsRef

    x = torch.randn(BATCH * 2, 576)
    spec = TrainSpec(
        activations=ActivationsRef(job_id="f" * 32, hook=HOOK),
        saes=[SaeConfig(architecture="topk", d_sae=4_608, k=32)],
        total_tokens=BATCH * steps,
        batch_size=BATCH,
        checkpoint_every_tokens=None,
    )
    batches = (x[(i % 2) * BATCH : (i % 2 + 1) * BATCH] for i in range(10**9))
    result = train_saes(spec, batches, device=device)
    return result.tokens / result.wall_s


def s3_copy(srv, manifest: dict, read: Callable[[str], bytes], prefix: str) -> Callable[[str], bytes]:
    """The shards uploaded to the SeaweedFS bucket under `prefix/` (the twins share keys); their reader."""
    from saeq.platform.s3_store import S3Store

    store = S3Store(srv.endpoint, srv.access_key, srv.secret_key, srv.bucket)
    for s in manifest["hooks"][HOOK]["shards"]:
        store.put(f"{prefix}/{s['key']}", read(s["key"]))
    return lambda key: store.get(f"{prefix}/{key}")


def drop_page_cache() -> None:
    """Empty the kernel's page cache (Linux, root), so the next local read goes to the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as e:
        raise SystemExit(f"--drop-caches: cannot write /proc/sys/vm/drop_caches ({e}); run as root on Linux") from e


def measure(
    name: str,
    manifest: dict,
    read: Callable[[str], bytes],
    epochs: int,
    device: str,
    cold_disk: bool = False,
    rounds: int = 1,
) -> dict:
    """One source's row. `cold_disk`: the page cache is emptied before each raw read and before the
    feed's first epoch, so all three read the disk (without it the raw reads warm the page cache
    and the feed's cold epoch reads from there). `rounds`: raw reads and a fresh feed's cold epoch
    that many times, alternating, each round's cold over its own best raw; the row gives the round
    of the median ratio (a cold epoch of 16 shards lasts ~0.4 s: one round moves by 20 points)."""
    keys = [s["key"] for s in manifest["hooks"][HOOK]["shards"]]
    reset = drop_page_cache if cold_disk else (lambda: None)
    per_round = []
    for _ in range(rounds):
        reset()
        t1, n = raw(read, keys, 1)
        reset()
        t4, _ = raw(read, keys, 4)
        reset()
        cold, warm, n_epoch, first_s = feed(manifest, read, epochs, device)
        per_token = n / int(manifest["hooks"][HOOK]["n_tokens"])  # shard bytes per token (acts + the rest)
        per_round.append((cold / max(n / t1, n / t4) * per_token, t1, t4, cold, warm, n_epoch, first_s))
    ratios = sorted(r[0] for r in per_round)
    _, t1, t4, cold, warm, n_epoch, first_s = sorted(per_round)[(rounds - 1) // 2]
    copy, gather = ceilings(manifest, read)
    row = {
        "source": name,
        "raw_GBps_1": n / t1 / 1e9,
        "raw_GBps_4": n / t4 / 1e9,
        "raw_tok_s_1": n / t1 / per_token,
        "raw_tok_s_4": n / t4 / per_token,
        "cold_tok_s": cold,
        "warm_tok_s": warm,
        "epoch_tokens": n_epoch,
        "first_batch_s": first_s,
        "memcpy_tok_s": copy,
        "index_select_tok_s": gather,
        "cold_vs_raw_rounds": ratios,
    }
    best_raw = max(row["raw_tok_s_1"], row["raw_tok_s_4"])
    row["cold_vs_raw"] = cold / best_raw
    spread = f", rounds {ratios[0]:.0%}-{ratios[-1]:.0%}" if rounds > 1 else ""
    print(
        f"{name:<12} raw {row['raw_GBps_1']:.2f} GB/s ({row['raw_tok_s_1'] / 1e3:,.0f}k tok/s) 1 thread, "
        f"{row['raw_GBps_4']:.2f} GB/s ({row['raw_tok_s_4'] / 1e3:,.0f}k tok/s) 4 threads | feed cold "
        f"{cold / 1e3:,.0f}k tok/s ({row['cold_vs_raw']:.0%} of the best raw{spread}; first batch {first_s:.2f} s), "
        f"warm {warm / 1e6:.2f}M tok/s | this moment's ceilings: memcpy {copy / 1e6:.2f}M, "
        f"index_select {gather / 1e6:.2f}M tok/s",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3, help="warm epochs timed after the cold one")
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    ap.add_argument("--device", default="cpu", help="where batches are delivered (cpu, cuda, cuda:N)")
    ap.add_argument("--smoke", action="store_true", help="tiniest sizes: 3 synthetic shards, 1 warm epoch")
    ap.add_argument("--rounds", type=int, default=1, help="raw reads and cold epochs per source; the median is kept")
    ap.add_argument(
        "--shards",
        type=int,
        default=0,
        help="a synthetic harvest of this many shards of 16,384 tokens (0: the demo's, else 16)",
    )
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="local rows from the disk: empty the page cache before each raw read and the cold epoch (root)",
    )
    args = ap.parse_args()
    if args.smoke:
        args.epochs = 1
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {os.getloadavg()[0]:.1f}, batches on {args.device}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="saeq-feed-") as tmp:
        found = None if args.smoke or args.shards else demo_harvest()
        n_shards = args.shards or (3 if args.smoke else 16)
        m32, read32 = found if found else synthetic_harvest(Path(tmp) / "f32", n_shards)
        what = (
            "the demo's"
            if found
            else f"synthetic, {n_shards} shards" + ("" if args.shards else " (no demo harvest found)")
        )
        print("harvest:", what, flush=True)
        m16, read16 = bf16_twin(m32, read32, Path(tmp) / "bf16")
        sources = [("fp32", m32, read32), ("bf16", m16, read16)]
        for dtype, m, read in sources:
            name = f"{dtype} disk" if args.drop_caches else f"{dtype} local"
            rows.append(measure(name, m, read, args.epochs, args.device, args.drop_caches, args.rounds))
        for dtype, m, read in sources:
            in_ram = {s["key"]: read(s["key"]) for s in m["hooks"][HOOK]["shards"]}
            rows.append(measure(f"{dtype} RAM", m, in_ram.__getitem__, args.epochs, args.device, rounds=args.rounds))
            del in_ram
        if not args.no_s3:
            from tests.servers import s3_server

            with s3_server(bucket="saeq-feed") as srv:
                for dtype, m, read in sources:
                    from_s3 = s3_copy(srv, m, read, dtype)
                    rows.append(measure(f"{dtype} S3", m, from_s3, args.epochs, args.device, rounds=args.rounds))
    rate = trainer_rate(args.device, steps=2 if args.smoke else 6)
    print(f"trainer on {args.device} (TopK d=576, 4,608 latents, k=32, batch 4,096): {rate / 1e3:,.1f}k tok/s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "trainer_tok_s": rate}, indent=1))


if __name__ == "__main__":
    main()
