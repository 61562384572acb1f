"""`saeq plan spec.yaml`: what a job would cost, without queuing it (`POST /v1/jobs?dry_run=true`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from saeq.client.cli_teams import _call


@click.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--depends-on", multiple=True, help="Job id that must succeed first (repeatable).")
@click.option("--priority", default=0, show_default=True, help="0-9, as for a submit.")
@click.option("--json", "as_json", is_flag=True, help="Print the Plan as JSON.")
@click.pass_context
def plan(ctx, spec_file: Path, depends_on, priority: int, as_json: bool) -> None:
    """A job's cost plan from a YAML/JSON file (as `saeq submit` reads): tokens, bytes to store, peak
    memory, wall time and GPU-seconds from finished jobs alike, the jobs ahead, the quota verdict."""
    try:
        doc = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError as e:
        raise click.ClickException(f"{spec_file}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise click.ClickException(f"{spec_file}: expected a mapping with a `kind` or a `spec`")
    deps = list(doc.get("depends_on", [])) + list(depends_on)
    found = _call(ctx, "plan", doc.get("spec", doc), depends_on=deps, priority=priority)
    click.echo(json.dumps(found, indent=2) if as_json else plan_table(found))


def plan_table(p: dict) -> str:
    """The plan as aligned lines of `what  value  (why)`."""
    mem = p.get("peak_memory")
    rows = [
        ("tokens", f"{p['tokens']:,}", ""),
        ("bytes to store", _bytes(p["bytes_to_store"]), p["bytes_formula"]),
        (
            "peak memory",
            _bytes(mem["total_bytes"]) if mem else "unknown",
            ", ".join(f"{k} {_bytes(v)}" for k, v in mem["parts"].items()) if mem else "no estimate for this job",
        ),
        ("wall time", _duration(p["wall_s"]), p["basis_text"]),
        (
            "GPU-seconds",
            "unknown" if p["gpu_s"] is None else f"{p['gpu_s']:,.0f}",
            "device-seconds (CPU on CPU workers)",
        ),
        ("jobs ahead", f"{p['jobs_ahead']:,}", p["jobs_ahead_basis"]),
        ("quota", _verdict(p["verdict"]), ""),
    ]
    rows += [("", "", f"{r['field'] or 'team'}: {r['message']}") for r in p["verdict"]["reasons"]]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    head = f"plan of a {p['kind']} job of team {p['team']} on queue {p['queue']} (nothing queued)"
    return "\n".join([head, *(f"{a:<{width}}  {b:<{value_width}}  {c}".rstrip() for a, b, c in rows)])


def _verdict(v: dict) -> str:
    return "would be queued" if v["allowed"] else f"refused ({v['status']})"


def _bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _duration(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 60:
        return f"{s:.1f} s"
    minutes, secs = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
