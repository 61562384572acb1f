"""The checks' figures, as PNG bytes: the specificity histogram coloured by rating (as in Scaling
Monosemanticity), sensitivity recalls, a periodic table of completeness, probing accuracy by k."""

from __future__ import annotations

import io

from saeq.checks.elements import ELEMENTS

RATING_COLOURS = ("#d9d9d9", "#9ecae1", "#4292c6", "#08519c")  # 0 grey .. 3 dark blue


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def specificity_plot(result: dict, title: str) -> bytes:
    """Contexts by activation (fraction of the feature's max; zero apart), stacked by rating."""
    plt = _pyplot()
    rows = [c for f in result["features"] for c in f["contexts"]]
    n_bins = 10
    counts = [[0] * (n_bins + 1) for _ in range(4)]  # [rating][bin]; bin 0: zero activation
    for c in rows:
        b = 0 if c["fraction_of_max"] <= 0 else 1 + min(int(c["fraction_of_max"] * n_bins), n_bins - 1)
        counts[c["rating"]][b] += 1
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = list(range(n_bins + 1))
    bottom = [0] * len(xs)
    for rating in range(4):
        ax.bar(xs, counts[rating], bottom=bottom, color=RATING_COLOURS[rating], label=f"rated {rating}")
        bottom = [b + c for b, c in zip(bottom, counts[rating], strict=False)]
    ax.set_xticks(xs, ["0"] + [f"{(i + 1) / n_bins:.1f}" for i in range(n_bins)], fontsize=8)
    s = result["summary"]
    rho = "-" if s["mean_spearman"] is None else f"{s['mean_spearman']:.2f}"
    ax.set(
        xlabel="activation / the feature's max (bin's upper edge; 0: silent)",
        ylabel="contexts",
        title=f"{title}: specificity, {s['n_features']} features, mean Spearman {rho} ({result['rater']})",
    )
    ax.legend(fontsize=8)
    return png_bytes(fig)


def sensitivity_plot(results: dict[str, dict], title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for lang, r in results.items():
        recalls = [f["recall"] for f in r["features"]]
        ax.hist(recalls, bins=[i / 10 for i in range(11)], alpha=0.55, label=f"{lang}: {len(recalls)} features")
        fpr = r["summary"]["mean_false_positive_rate"]
        if fpr is not None:
            ax.axvline(fpr, ls="--", lw=1, color=ax.patches[-1].get_facecolor(), alpha=1)
    ax.set(
        xlabel="recall: share of a feature's English articles whose translation it fires on "
        "(dashed: mean false-positive rate)",
        ylabel="features",
        title=f"{title}: sensitivity",
    )
    ax.xaxis.label.set_fontsize(8)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def completeness_plot(members: list[dict], category: str, title: str) -> bytes:
    """The periodic table for the builtin elements; other categories in rows of ten."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    places = {e.name: (e.row, e.column, e.symbol) for e in ELEMENTS}
    elements = all(m["name"] in places for m in members)
    cells = [
        (places[m["name"]] if elements else (i // 10 + 1, i % 10 + 1, m["name"][:10]), m) for i, m in enumerate(members)
    ]
    n_rows = max(r for (r, _, _), _ in cells)
    n_cols = 18 if elements else min(10, len(members))
    fig, ax = plt.subplots(figsize=(n_cols * 0.62, n_rows * 0.62 + 0.8))
    for (row, col, text), m in cells:
        y = row + (0.4 if elements and row >= 8 else 0)  # a gap above the f-block rows
        colour = "#31a354" if m["covered"] else "#f0f0f0"
        ax.add_patch(Rectangle((col - 0.5, y - 0.5), 0.95, 0.95, color=colour, ec="#999999", lw=0.5))
        ax.text(
            col,
            y - 0.08,
            text,
            ha="center",
            va="center",
            fontsize=8 if elements else 5,
            color="white" if m["covered"] else "black",
        )
        if m["covered"]:
            ax.text(col, y + 0.28, str(m["feature"]), ha="center", va="center", fontsize=4.5, color="white")
    ax.set_xlim(0.4, n_cols + 0.6)
    ax.set_ylim(n_rows + (0.95 if elements else 0.6), 0.4)
    ax.axis("off")
    n_cov = sum(m["covered"] for m in members)
    ax.set_title(
        f"{title}: completeness, {category}: {n_cov}/{len(members)} members have a specific "
        "feature (green, with its index)",
        fontsize=9,
    )
    return png_bytes(fig)


def probing_plot(result: dict, title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    mean = result["mean_accuracy"]
    ks = result["ks"]
    for kind, style in (("sae", "o-"), ("raw", "s--")):
        ax.plot(
            ks, [mean[kind][str(k)] for k in ks], style, label=f"{kind} latents" if kind == "sae" else "raw activations"
        )
    ax.axhline(mean["raw"]["all"], color="grey", lw=1, ls=":", label="raw, all dimensions")
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(
        xlabel="k (features kept)",
        ylabel="test accuracy (balanced tasks; 0.5 chance)",
        title=f"{title}: sparse probing of {result['n_topics']} topics",
        ylim=(0.45, 1.01),
    )
    ax.legend(fontsize=8)
    return png_bytes(fig)
