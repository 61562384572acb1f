"""`saeq compare JOB_A JOB_B`: two trained SAEs evaluated on the same held-out contexts, metric by
metric (`POST /v1/compare`): the paired difference with its 95% interval and a verdict, and the
stable fraction of their matched features."""

from __future__ import annotations

import json
import math

import click

from saeq.client.cli_teams import _call
from saeq.specs.compare import NO_FLOOR


@click.command()
@click.argument("job_a")
@click.argument("job_b")
@click.option("--name-a", default=None, help="Which SAE of JOB_A (default: the first).")
@click.option("--name-b", default=None, help="Which SAE of JOB_B (default: the first).")
@click.option("--max-tokens", default=16_384, show_default=True, help="Held-out tokens both are evaluated on.")
@click.option(
    "--seed-floor",
    default="auto",
    show_default=True,
    metavar="auto|off|JOB[:CONFIG]",
    help="Whose seeds give the noise floor: a train job with seeds (and its configuration), 'auto' (A's "
    "or B's train job, when it has 2 more seeds of the config) or 'off' (evaluation noise only).",
)
@click.option(
    "--noise-floor",
    multiple=True,
    metavar="METRIC=VALUE",
    help="A difference below VALUE is within noise (e.g. fvu=0.004, the seed-to-seed spread); repeatable.",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the job and print the table (default: print its id).")
@click.option("--json", "as_json", is_flag=True, help="With --wait: print the comparison as JSON.")
@click.pass_context
def compare(ctx, job_a, job_b, name_a, name_b, max_tokens, seed_floor, noise_floor, wait, as_json) -> None:
    """Queue the comparison of the SAE of train job JOB_A (A) with JOB_B's (B); with --wait, print
    per metric A, B, A - B with its interval and the verdict, then the stable features."""
    floors = {}
    for item in noise_floor:
        metric, _, value = item.partition("=")
        try:
            floors[metric] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected METRIC=VALUE", param_hint="--noise-floor") from None
    if seed_floor not in ("auto", "off"):
        job, _, config = seed_floor.partition(":")
        seed_floor = {"job_id": job, "config": config or None}
    out = _call(
        ctx,
        "compare",
        job_a,
        job_b,
        name_a=name_a,
        name_b=name_b,
        max_tokens=max_tokens,
        seed_floor=seed_floor,
        noise_floor=floors,
        wait=wait,
        progress=wait and not as_json,
    )
    if not wait:
        return click.echo(f"{out['id']}  (queued: an evaluate job; --wait prints the table)")
    click.echo(json.dumps(out, indent=2) if as_json else compare_table(out))


def _ci(est: dict, fmt: str = "{:.4g}") -> str:
    if math.isnan(est["low"]) or math.isnan(est["high"]):
        return fmt.format(est["value"])
    return f"{fmt.format(est['value'])} [{fmt.format(est['low'])}, {fmt.format(est['high'])}]"


def compare_table(c: dict) -> str:
    """The noise floor's line, aligned rows `metric  A  B  A - B [interval]  floor  verdict`, then the
    feature matching's line."""

    def who(p: dict) -> str:
        return f"{p.get('job_id', p.get('path', '?'))[:12]}/{p.get('name')} ({p.get('architecture')}, d_sae {p.get('d_sae')})"

    rows = [("metric", "A", "B", "A - B [95%]", "floor", "verdict")]
    rows += [
        (
            r["metric"],
            f"{r['a']['value']:.4g}",
            f"{r['b']['value']:.4g}",
            _ci(r["difference"]),
            "-" if r.get("floor") is None else f"{r['floor']:.4g}",
            r["verdict"],
        )
        for r in c["metrics"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    n = c["metrics"][0]["difference"]
    lines = [
        f"A: {who(c['a'])}",
        f"B: {who(c['b'])}",
        f"on the same {n['n']:,} {n['unit']} (paired bootstrap; dead_fraction: Newcombe over latents)",
        c.get("noise_note", NO_FLOOR),
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows]
    f = c["features"]
    frac = f["stable_fraction"]
    lines.append(
        f"stable features: {f['n_stable']:,} of A's {f['n_alive']:,} live latents, {_ci(frac, '{:.3f}')} "
        f"(decoder cosine >= {f['min_cosine']} and activation correlation >= {f['min_correlation']}, "
        f"Hungarian match; mean matched cosine {f['mean_cosine']:.3f})"
    )
    if sp := f.get("splits"):
        wide = "B" if sp["narrow"] == "a" else "A"
        lines.append(
            f"features split across widths: {sp['n_split']:,} of {sp['narrow'].upper()}'s {sp['n_features']:,} "
            f"have 2+ children in {wide} (decoder cosine >= {sp['min_cosine']}), "
            f"{_ci(sp['split_fraction'], '{:.3f}')}"
        )
    return "\n".join(lines)
