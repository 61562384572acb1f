"""Redis as the manifests run it: it never evicts, so it has a maxmemory and an alert before it is
reached, its event streams are capped, and its image carries the fixes for the 2025 CVEs."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.test_manifests import OVERLAYS, ROOT, compose, objects

# The oldest patch of each line with both CVE-2025-21605 and CVE-2025-49844 fixed.
FIXED = {(7, 2): (7, 2, 11), (7, 4): (7, 4, 6), (8, 0): (8, 0, 4), (8, 2): (8, 2, 2)}


def version_is_fixed(image: str) -> bool:
    m = re.fullmatch(r"redis:(\d+)\.(\d+)\.(\d+)(-[\w.]+)?", image)
    assert m, f"{image}: pin a full redis version"
    v = tuple(int(x) for x in m.groups()[:3])
    newest_line = max(FIXED)
    return v[:2] > newest_line or (v[:2] in FIXED and v >= FIXED[v[:2]])


def test_the_cve_table_knows_the_old_pin():
    assert not version_is_fixed("redis:7.4.2-alpine") and version_is_fixed("redis:7.4.6-alpine")


def maxmemory_bytes(args: list[str]) -> int:
    assert "--maxmemory" in args, f"noeviction without --maxmemory: {args}"
    value = args[args.index("--maxmemory") + 1].lower()
    n, unit = re.fullmatch(r"(\d+)(mb|gb)?", value).groups()
    return int(n) * {"mb": 2**20, "gb": 2**30, None: 1}[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_has_a_fixed_image_and_a_maxmemory_under_its_memory_limit(overlay):
    redis = objects(overlay, "StatefulSet")["saeq-redis"]["spec"]["template"]["spec"]
    server = next(c for c in redis["containers"] if c["name"] == "redis")
    assert version_is_fixed(server["image"]), server["image"]
    args = server["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    limit = server["resources"]["limits"]["memory"]
    limit_bytes = int(limit[:-2]) * {"Gi": 2**30, "Mi": 2**20}[limit[-2:]]
    # Headroom above maxmemory for the AOF rewrite's fork: at most 80% of the limit.
    assert maxmemory_bytes(args) <= 0.8 * limit_bytes
    # ...and at least half of it: a limit raised without maxmemory (prod's 8Gi) holds no more data,
    # and the memory alert still fires at 80% of the old maxmemory.
    assert maxmemory_bytes(args) >= 0.5 * limit_bytes, (limit, args)
    exporter = [c for c in redis["containers"] if "redis_exporter" in c["image"]]
    assert exporter and any(p["containerPort"] == 9121 for p in exporter[0]["ports"])


def test_compose_redis_matches_the_manifests():
    services = compose()["services"]
    assert version_is_fixed(services["redis"]["image"])
    assert maxmemory_bytes(services["redis"]["command"]) > 0
    assert "redis_exporter" in services["redis-exporter"]["image"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert any("redis-exporter:9121" in str(j) for j in scrape["scrape_configs"])


def test_an_alert_fires_before_redis_reaches_maxmemory():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    memory = [e for e in exprs if "redis_memory_used_bytes" in e and "redis_memory_max_bytes" in e]
    assert memory, "no alert on redis_memory_used_bytes / redis_memory_max_bytes"
    threshold = float(re.search(r">\s*(0\.\d+)\s*$", memory[0].strip()).group(1))
    assert 0.6 <= threshold <= 0.9


def test_every_event_stream_append_is_capped():
    from saeq.platform import lua_scripts

    source = "\n".join(v for v in vars(lua_scripts).values() if isinstance(v, str))
    xadds = re.findall(r"call\('xadd'[^\n]*", source, re.I)
    assert xadds, "no XADD found in saeq.platform.lua_scripts"
    for call in xadds:
        assert re.search(r"'MAXLEN',\s*'~',\s*'\d+'", call), f"uncapped stream: {call}"
    py = (ROOT / "shared" / "saeq" / "platform").rglob("*.py")
    for path in py:
        for line in path.read_text().splitlines():
            if re.search(r"\.xadd\(", line):
                assert "maxlen" in line, f"{path.name}: uncapped XADD: {line.strip()}"
