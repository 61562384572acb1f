"""`saeq inspect TRAIN_JOB "text"`: which features of a trained SAE fire on each token of a text
(`POST /v1/features/inspect`)."""

from __future__ import annotations

import json

import click

from saeq.client.cli_teams import _call


@click.command()
@click.argument("train_job")
@click.argument("text")
@click.option("--top", "top_k", default=5, show_default=True, help="Features shown per token (1-64).")
@click.option("--feature", "-f", type=int, multiple=True, help="Also show this feature's activation on every token.")
@click.option("--sae-name", default=None, help="Which SAE of the train job (default: the first).")
@click.option("--label-job", default=None, help="Label job naming the features (default: the newest of this SAE).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
def inspect(ctx, train_job, text, top_k, feature, sae_name, label_job, as_json) -> None:
    """Per token of TEXT: its top features with activation and label; sinks (position 0, norm
    outliers) are marked and left out, as training leaves them out."""
    out = _call(
        ctx, "inspect", train_job, text, top_k=top_k, features=list(feature), sae_name=sae_name, label_job=label_job
    )
    click.echo(json.dumps(out, indent=2) if as_json else inspect_table(out))


def inspect_table(out: dict) -> str:
    """One line a token: position, the token, the chosen features' activations, its top features."""
    from saeq.client.cli import printable

    chosen = out.get("features") or []
    lines = [f"{out['sae'].get('name', '')} at {out['hook']}; labels from {out['label_job'] or 'no label job'}"]
    head = ["pos", "token".ljust(16), *(f"f{f}".rjust(8) for f in chosen), "top features (activation: label)"]
    lines.append("  ".join(head))
    for t in out["tokens"]:
        cells = [f"{t['position']:3d}", printable(json.dumps(t["text"]))[:16].ljust(16)]
        acts = t["activations"]
        cells += ["-".rjust(8)] * len(chosen) if acts is None else [f"{a:.3f}".rjust(8) for a in acts]
        if t["sink"]:
            why = "position 0" if t["sink"] == "position0" else "norm outlier"
            cells.append(f"sink ({why}): left out")
        else:
            cells.append(
                "; ".join(
                    f"{f['feature']} {f['activation']:.3f}" + (f": {printable(f['label'])}" if f["label"] else "")
                    for f in t["top"]
                )
            )
        lines.append("  ".join(cells))
    lines.append(f"{len(out['tokens'])} tokens, {out['n_sinks']} sinks left out, {out['seconds']:.2f} s on the worker")
    return "\n".join(lines)
