"""Write k8s/components/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml, the one
source of saeq's alert rules (kustomize cannot read files outside a component's folder)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET = ROOT / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/alerts.yml by scripts/sync_prometheusrule.py: edit that\n"
    "# file, then run the script.\n"
)


def _block_strings(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "saeq", "labels": {"release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }
    dumper = type("Dumper", (yaml.SafeDumper,), {})
    dumper.add_representer(str, _block_strings)
    return HEADER + yaml.dump(rule, Dumper=dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
