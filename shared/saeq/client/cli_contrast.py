"""`saeq contrast TRAIN_JOB --a-topic "Physical sciences" --b-topic People`: which features of a
trained SAE separate two sets of texts (`POST /v1/features/contrast`), scored on held-out texts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from saeq.client.cli_teams import _call


def _side(name: str, texts: tuple[str, ...], file: Path | None, topic: str | None, corpus: str, docs: int):
    """A TextSet: --a TEXT (repeated), --a-file (one text a line), or --a-topic of a builtin corpus."""
    given = [bool(texts), file is not None, topic is not None]
    if sum(given) != 1:
        raise click.UsageError(f"give one of --{name}, --{name}-file and --{name}-topic")
    if topic is not None:
        return {"corpus": corpus, "topic": topic, "max_docs": docs}
    if file is not None:
        return {"texts": [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]}
    return {"texts": list(texts)}


@click.command()
@click.argument("train_job")
@click.option("--a", "a_texts", multiple=True, help="A text of set a (repeat the option).")
@click.option("--b", "b_texts", multiple=True, help="A text of set b (repeat the option).")
@click.option("--a-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Set a, one text a line.")
@click.option("--b-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Set b, one text a line.")
@click.option("--a-topic", default=None, help='Set a: the builtin corpus\'s documents of this topic ("People").')
@click.option("--b-topic", default=None, help="Set b: the builtin corpus's documents of this topic.")
@click.option("--corpus", default="wiki-en", show_default=True, type=click.Choice(["wiki-en", "wiki-fr", "wiki-es"]))
@click.option("--docs", default=64, show_default=True, help="Documents per topic (4-256).")
@click.option("--top", "top_k", default=10, show_default=True, help="Features shown each way (1-64).")
@click.option("--aggregate", default="max", show_default=True, type=click.Choice(["max", "mean"]))
@click.option("--max-tokens", default=128, show_default=True, help="Each text cut at this many tokens.")
@click.option("--held-out", default=0.5, show_default=True, help="Share of each set kept apart for scoring.")
@click.option("--seed", default=0, show_default=True)
@click.option("--sae-name", default=None, help="Which SAE of the train job (default: the first).")
@click.option("--label-job", default=None, help="Label job naming the features (default: the newest of this SAE).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
def contrast(ctx, train_job, a_texts, b_texts, a_file, b_file, a_topic, b_topic, corpus, docs, **kw) -> None:
    """The features whose per-text activation separates set a from set b: chosen on half of each
    set, each with its detection AUROC and Cohen's d on the held-out half (95% intervals)."""
    as_json = kw.pop("as_json")
    a = _side("a", a_texts, a_file, a_topic, corpus, docs)
    b = _side("b", b_texts, b_file, b_topic, corpus, docs)
    out = _call(ctx, "contrast", train_job, a, b, **kw)
    click.echo(json.dumps(out, indent=2) if as_json else contrast_table(out))


def contrast_table(out: dict) -> str:
    """A line a feature, each direction under its heading: held-out AUROC and d with intervals."""
    from saeq.client.cli import printable

    held = out["n_held_out"]
    lines = [
        f"{out['sae'].get('name', '')} at {out['hook']}; per-text {out['aggregate']}; "
        f"{out['n_texts']['a']} vs {out['n_texts']['b']} texts, {held['a']} + {held['b']} held out; "
        f"labels from {out['label_job'] or 'no label job'}"
    ]
    for side in ("a", "b"):
        lines.append(f"higher on {side}:")
        lines.append("  feature  sel AUROC  held-out AUROC [95%]   Cohen's d [95%]        mean a   mean b  label")
        for f in out[f"higher_on_{side}"]:
            auc, d = f["held_out_auroc"], f["held_out_cohens_d"]
            auc_text = f"{auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]"
            d_text = "-" if d is None else f"{d['value']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"
            lines.append(
                f"  {f['feature']:7d}  {f['selection_auroc']:9.3f}  {auc_text:<21}  {d_text:<21}  "
                f"{f['mean_a']:7.3f}  {f['mean_b']:7.3f}  {printable(f['label'] or '')}"
            )
    lines.append(f"{out['n_tokens']:,} tokens ({out['n_cut']} texts cut), {out['seconds']:.2f} s on the worker")
    return "\n".join(lines)
