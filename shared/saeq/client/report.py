"""An evaluation report a person can read: PNG plots and a Markdown page that links them.

Pure functions from an EvalResult to bytes; the job adapter stores them. Importing this module
imports no torch, so `saeq report` can print the summary table.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saeq.jobs.evaluate import EvalResult

HEADLINE = [
    ("fvu", "FVU (ordinary tokens)", "{:.4f}"),
    ("explained_variance", "explained variance", "{:.4f}"),
    ("mse", "MSE (sum over dims)", "{:.4g}"),
    ("cossim", "cosine similarity", "{:.4f}"),
    ("l0", "L0 (mean active latents)", "{:.2f}"),
    ("dead_fraction", "dead latents", "{:.2%}"),
    ("dense_fraction", "dense latents (>10% of tokens)", "{:.2%}"),
    ("ce_loss_recovered", "CE-loss recovered", "{:.4f}"),
    ("ce_loss_clean", "CE clean (nats)", "{:.4f}"),
    ("ce_loss_with_sae", "CE with SAE (nats)", "{:.4f}"),
    ("ce_loss_with_ablation", "CE zero-ablated (nats)", "{:.4f}"),
    ("delta_lm_loss", "delta LM loss (nats)", "{:.4f}"),
    ("kl_div_with_sae", "KL with SAE (nats)", "{:.4f}"),
]


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(result: EvalResult, title: str) -> dict[str, bytes]:
    """{file name: PNG bytes}: feature density, L0 histogram, FVU by token position."""
    import matplotlib

    from saeq.jobs.evaluate import L0_BINS, LOG_DENSITY_BINS

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
    m, c = result.metrics, result.counts
    rows = "\n".join(f"| {label} | {fmt.format(m[key])} |" for key, label, fmt in HEADLINE)
    prov = "\n".join(f"- **{k}**: `{v}`" for k, v in provenance.items())
    figs = "\n\n".join(f"![{n}]({n})" for n in plot_names)
    return f"""# SAE evaluation

| metric | value |
|---|---|
{rows}

Tokens: {c["n_tokens"]:,} evaluated, {c["n_ordinary"]:,} ordinary, {c["n_sinks_excluded"]:,} attention
sinks left out of every average and kept clean in the splices; loss averaged over
{c["n_loss_positions"]:,} next-token predictions. Definitions: docs/metrics.md.

## Provenance

{prov}

## Plots

{figs}
"""


def summary_table(metrics: dict[str, float]) -> str:
    """Plain-text table for `saeq report`."""
    width = max(len(label) for _, label, _ in HEADLINE)
    return "\n".join(f"{label:<{width}}  {fmt.format(metrics[key])}" for key, label, fmt in HEADLINE if key in metrics)


def labels_table(records: list[dict], *, limit: int | None = None) -> str:
    """Feature | density | for each explainer: its label and detection score (balanced accuracy
    and AUC; 0.5 is chance)."""
    explainers = list(dict.fromkeys(r["explainer"] for r in records))
    by_feature: dict[int, dict[str, dict]] = {}
    for r in records:
        by_feature.setdefault(r["feature"], {})[r["explainer"]] = r
    header = ["feature", "density"]
    for e in explainers:
        header += [f"label ({e})", "detection bal.acc / AUC"]
    rows = []
    for f, rs in list(by_feature.items())[:limit]:
        row = [str(f), f"{next(iter(rs.values()))['density']:.2%}"]
        for e in explainers:
            r = rs.get(e)
            det = (r or {}).get("scores", {}).get("detection")
            row += [
                _clip(r["label"], 32) if r else "-",
                f"{_num(det['balanced_accuracy'])} / {_num(det['auc'])}" if det else "-",
            ]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def labels_summary(summary: dict) -> str:
    """One line per explainer: mean scores over its labelled features."""
    out = []
    for e, s in summary.items():
        parts = [f"{k} " + " ".join(f"{m}={v:.3f}" for m, v in ms.items()) for k, ms in s["scores"].items()]
        out.append(f"{e}: {s['n_features']} features; mean " + "; ".join(parts))
    return "\n".join(out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _num(v) -> str:
    return "-" if v is None else f"{v:.2f}"
