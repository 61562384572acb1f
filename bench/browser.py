"""Feature browser responsiveness: a label job of 16,384 features (synthetic rows and pages, as a
label job publishes them) behind a local stack; the feature list's first paint in headless Chromium
and the list route's latency, cold (first read of the summaries) and warm.

Target (issue 10): first paint of the list < 1 s on loopback. No peer ships an offline browser to
compare with (Neuronpedia is a hosted service; SAEDashboard writes static HTML per feature).
Usage: python bench/browser.py [--features 16384] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from saeq import keys
from saeq.dev.local_stack import LocalStack, StackOptions, free_port
from saeq.ml.feature_pages import CHUNK, PAGES_FORMAT
from saeq.platform.registry import Registry
from saeq.platform.store import LocalStore


def publish_label_job(registry: Registry, store: LocalStore, d_sae: int) -> str:
    sae = {"source": "job", "job_id": "0" * 31 + "1", "name": "synthetic"}
    job, _ = registry.create(kind="label", spec={"kind": "label", "sae": sae}, queue="cpu", depends_on=[])
    claim = registry.claim(job["id"], job["dispatch_id"], "bench")
    rows = [
        {
            "feature": f,
            "density": ((f * 7919) % 10_007) / 1e5,
            "max_activation": float(f % 31),
            "label": f"synthetic concept number {f}",
            "score": (f % 100) / 100,
            "labels": [{"explainer": "metadata", "label": f"synthetic concept number {f}", "auc": (f % 100) / 100}],
        }
        for f in range(d_sae)
    ]
    store.put(keys.feature_summaries(job["id"]), json.dumps({"format": PAGES_FORMAT, "features": rows}).encode())
    store.put(keys.labels_file(job["id"]), b"")
    manifest = {
        "kind": "label",
        "job_id": job["id"],
        "sae": sae,
        "labels_key": keys.labels_file(job["id"]),
        "n_features": d_sae,
        "browser": {"summaries_key": keys.feature_summaries(job["id"]), "chunk": CHUNK, "n_chunks": -(-d_sae // CHUNK)},
    }
    store.put(keys.manifest(job["id"]), json.dumps(manifest).encode())
    registry.finish(job["id"], claim.token, "succeeded", manifest_key=keys.manifest(job["id"]))
    return job["id"]


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=16_384)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    home = Path(tempfile.mkdtemp(prefix="saeq-bench-browser-"))
    with LocalStack(StackOptions(home=home, port=free_port())) as stack:
        store = LocalStore(stack.env()["SAEQ_STORE"][len("file://") :])
        registry = Registry.from_url(stack.redis_url)
        label = publish_label_job(registry, store, args.features)
        untouched = publish_label_job(registry, store, args.features)  # its first load reads cold
        route = f"{stack.url}/v1/browser/labels/{label}/features"
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {stack.admin_key}"}) as http:
            t0 = time.perf_counter()
            first = http.get(route, params={"limit": 50})
            cold_ms = 1000 * (time.perf_counter() - t0)
            assert first.json()["total"] == args.features
            warm = []
            for i in range(50):
                t0 = time.perf_counter()
                http.get(route, params={"limit": 50, "offset": 50 * i, "sort": "score"}).raise_for_status()
                warm.append(1000 * (time.perf_counter() - t0))
            search = []
            for i in range(20):
                t0 = time.perf_counter()
                http.get(route, params={"q": f"number {i}1"}).raise_for_status()
                search.append(1000 * (time.perf_counter() - t0))
        paints = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            # Signed in as a returning user is: the key already in the page's storage.
            context = browser.new_context()
            context.add_init_script(f"localStorage.setItem('saeq-api-key', {json.dumps(stack.admin_key)})")
            for i in range(args.repeats):
                page = context.new_page()
                page.goto(f"{stack.url}/browse#/features/{untouched if i == 0 else label}")
                page.wait_for_selector("#features tbody tr")
                # since navigation start, in the page's own clock: HTML, JS, the API call and the rows
                paints.append(page.evaluate("performance.now()"))
                assert page.locator("#features tbody tr").count() == 50
                page.close()
            browser.close()
    shutil.rmtree(home, ignore_errors=True)
    print(f"feature list of {args.features:,} features, 50 rows a page, loopback, {stack.url}")
    print(
        f"  list route: cold (first read) {cold_ms:.0f} ms; warm p50 {statistics.median(warm):.1f} ms, "
        f"p99 {pct(warm, 0.99):.1f} ms; search p50 {statistics.median(search):.1f} ms"
    )
    print(
        f"  first paint of the list in Chromium: median {statistics.median(paints):.0f} ms, "
        f"max {max(paints):.0f} ms over {args.repeats} loads; the first, {paints[0]:.0f} ms, includes the cold read; target < 1000 ms"
    )


if __name__ == "__main__":
    main()
