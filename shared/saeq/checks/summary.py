"""The checks in a few numbers (for the manifest and the CLI) and as a section of the report page.
Imports no torch."""

from __future__ import annotations


def checks_summary(doc: dict) -> dict:
    out: dict = {}
    if "specificity" in doc:
        sp = doc["specificity"]
        out["specificity"] = sp if "skipped" in sp else {**sp["summary"], "rater": sp["rater"]}
    if "sensitivity" in doc:
        out["sensitivity"] = {lang: r["summary"] for lang, r in doc["sensitivity"]["languages"].items()}
    if "completeness" in doc:
        out["completeness"] = {c["name"]: c["summary"] for c in doc["completeness"]["categories"]}
    if "probing" in doc:
        out["probing"] = {"n_topics": doc["probing"]["n_topics"], **doc["probing"]["mean_accuracy"]}
    return out


def checks_lines(summary: dict) -> list[str]:
    """Plain-text lines for `saeq report` and the demo."""
    lines = []
    sp = summary.get("specificity")
    if sp and "skipped" in sp:
        lines.append(f"specificity: skipped ({sp['skipped']})")
    elif sp:
        shares = " ".join("-" if v is None else f"{v:.2f}" for v in sp["high_rated_share_by_bin"])
        lines.append(
            f"specificity ({sp['rater']}, {sp['n_features']} features, {sp['n_contexts']} contexts): "
            f"mean Spearman {_f(sp['mean_spearman'])}, pooled {_f(sp['pooled_spearman'])}; share rated "
            f"2-3 by activation bin (0, .25, .5, .75, 1]: {shares}"
        )
    for lang, s in (summary.get("sensitivity") or {}).items():
        lines.append(
            f"sensitivity en->{lang} ({s['n_pairs']} article pairs, {s['n_features']} features): "
            f"pooled recall {_f(s['pooled_recall'])}, mean recall {_f(s['mean_recall'])}, "
            f"mean false-positive rate {_f(s['mean_false_positive_rate'])}"
        )
    for name, s in (summary.get("completeness") or {}).items():
        lines.append(
            f"completeness, {name}: {s['n_covered']}/{s['n_members']} members have a specific "
            f"feature ({s['n_distinct_features']} distinct features)"
        )
    pr = summary.get("probing")
    if pr and pr["n_topics"]:
        ks = [k for k in pr["sae"]]
        lines.append(
            f"sparse probing ({pr['n_topics']} topics), accuracy by k "
            + ", ".join(f"k={k}: SAE {pr['sae'][k]:.3f} / raw {pr['raw'][k]:.3f}" for k in ks)
            + f"; raw, all dims {pr['raw']['all']:.3f}"
        )
    return lines


def checks_markdown(doc: dict, plot_names: list[str]) -> str:
    summary = checks_summary(doc)
    figs = "\n\n".join(f"![{n}]({n})" for n in plot_names)
    body = "\n".join(f"- {line}" for line in checks_lines(summary))
    sections = [f"## Checks: specificity, sensitivity, completeness, sparse probing\n\n{body}\n"]
    for c in (doc.get("completeness") or {}).get("categories", []):
        missing = [m["name"] for m in c["members"] if not m["covered"]]
        covered = [
            f"{m['name']} ({m['feature']}{', ' + repr(m['label']) if m['label'] else ''})"
            for m in c["members"]
            if m["covered"]
        ]
        sections.append(
            f"**{c['name']}**: covered: {', '.join(covered) or 'none'}. Not covered: {', '.join(missing) or 'none'}.\n"
        )
    for lang, r in ((doc.get("sensitivity") or {}).get("languages") or {}).items():
        top = r["features"][:10]
        rows = "\n".join(
            f"| {f['feature']} | {f['label'] or '-'} | {f['n_english']} | {f['recall']:.2f} | "
            f"{_f(f['false_positive_rate'])} |"
            for f in top
        )
        sections.append(
            f"**en -> {lang}**, the features firing on most English articles:\n\n"
            f"| feature | label | English articles | recall | false-positive rate |\n"
            f"|---|---|---|---|---|\n{rows}\n"
        )
    sp = doc.get("specificity")
    if sp and "features" in sp:
        rows = "\n".join(
            f"| {f['feature']} | {f['label']} | {_f(f['spearman'])} | "
            + " | ".join(_f(v) for v in f["high_rated_share_by_bin"])
            + " |"
            for f in sp["features"]
        )
        sections.append(
            "**specificity** per feature (share rated 2-3 per activation bin):\n\n"
            "| feature | label | Spearman | "
            + " | ".join(sp["bins"])
            + " |\n|---|---|---|"
            + "---|" * len(sp["bins"])
            + f"\n{rows}\n"
        )
    sections.append("Definitions and formulas: docs/checks.md.\n\n" + figs)
    return "\n".join(sections)


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"
