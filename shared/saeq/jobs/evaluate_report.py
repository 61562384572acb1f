"""An evaluation report a person can read: PNG plots and a Markdown page that links them.

Pure functions from an EvalResult to bytes; the evaluate worker stores them. matplotlib is imported
when a plot is drawn.
"""

from __future__ import annotations

from saeq.checks.plots import png_bytes
from saeq.jobs.evaluate import L0_BINS, LOG_DENSITY_BINS, EvalResult
from saeq.specs.metrics import HEADLINE


def plots(result: EvalResult, title: str) -> dict[str, bytes]:
    """{file name: PNG bytes}: feature density, L0 histogram, FVU by token position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges = LOG_DENSITY_BINS.tolist()
    ax.stairs(result.log_density_histogram, edges, fill=True)
    ax.set(
        xlabel="log10 feature density (fraction of ordinary tokens)",
        ylabel="latents",
        title=f"{title}: feature density ({result.counts['n_dead']} dead, not shown)",
    )
    out["feature_density.png"] = png_bytes(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = result.l0_max / L0_BINS
    ax.stairs(result.l0_histogram, [i * width for i in range(L0_BINS + 1)], fill=True)
    ax.set(xlabel="L0 (active latents per token)", ylabel="tokens", title=f"{title}: L0")
    out["l0_histogram.png"] = png_bytes(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    pos = [(t, v) for t, v in enumerate(result.fvu_by_position) if v is not None]
    ax.plot([t for t, _ in pos], [v for _, v in pos], marker=".", lw=1)
    ax.set(xlabel="position in context", ylabel="FVU", title=f"{title}: FVU by position (sinks left out)")
    out["fvu_by_position.png"] = png_bytes(fig)
    return out


def markdown(result: EvalResult, provenance: dict, plot_names: list[str]) -> str:
    """The report page; plots are linked by relative file name."""
    m, c, ci = result.metrics, result.counts, result.intervals
    rows = "\n".join(
        f"| {label} | {ci[key].text(fmt) if key in ci else fmt.format(m[key])} |" for key, label, fmt in HEADLINE
    )
    prov = "\n".join(f"- **{k}**: `{v}`" for k, v in provenance.items())
    figs = "\n\n".join(f"![{n}]({n})" for n in plot_names)
    kind = str(result.splice.get("kind", "sae"))
    return f"""# {_TITLES.get(kind, kind)} evaluation

{spliced_sentence(result)}

| metric | value [95% interval] (n) |
|---|---|
{rows}

Intervals: percentile bootstrap over the evaluation's contexts (resampled whole: a context's tokens
share a document), 1,000 resamples; FVU and explained variance the basic bootstrap (quantiles
reflected about the value: both are measured about the sample's own mean); dead and dense latents:
Wilson's interval over the latents.

Tokens: {c["n_tokens"]:,} evaluated, {c["n_ordinary"]:,} ordinary, {c["n_sinks_excluded"]:,} attention
sinks left out of every average and kept clean in the splices; loss averaged over
{c["n_loss_positions"]:,} next-token predictions. Definitions: docs/metrics.md.
{_layer_table(result)}
## Provenance

{prov}

## Plots

{figs}
"""


_TITLES = {"sae": "SAE", "transcoder": "Transcoder", "crosscoder": "Crosscoder"}


def spliced_sentence(result: EvalResult) -> str:
    """What the evaluation spliced into the model, in words."""
    s = result.splice
    reads, replaces = list(s.get("reads", [])), list(s.get("replaces", []))
    kind = s.get("kind", "sae")
    if kind == "transcoder":
        return (
            f"Spliced: the transcoder reads `{reads[0]}` and its output replaces `{replaces[0]}` (FVU, cosine "
            f"and MSE are against `{replaces[0]}`; ablation zeroes it)."
        )
    if kind == "crosscoder":
        names = ", ".join(f"`{h}`" for h in replaces)
        return (
            f"Spliced: the crosscoder reads {names} side by side and replaces each with its layer's part of "
            "the reconstruction, all at once (ablation zeroes them all)."
        )
    return f"Spliced: the SAE's reconstruction replaces `{replaces[0] if replaces else '?'}`."


def _layer_table(result: EvalResult) -> str:
    if not result.fvu_per_layer:
        return ""
    cis = result.fvu_per_layer_intervals or [None] * len(result.fvu_per_layer)
    rows = "\n".join(
        f"| `{h}` | {f'{v:.4f}' if ci is None else ci.text('{:.4f}')} |"
        for h, v, ci in zip(result.splice.get("replaces", []), result.fvu_per_layer, cis, strict=False)
    )
    return f"""
FVU of each layer (its residual sum of squares over its own variance; 95% interval over the contexts):

| hook | FVU [95% interval] (n) |
|---|---|
{rows}
"""
