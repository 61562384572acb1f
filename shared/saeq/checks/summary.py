"""The checks in a few numbers (for the manifest and the CLI) and as a section of the report page.
Imports no torch."""

from __future__ import annotations

from saeq.specs.metrics import checks_lines, short_ci, with_ci


def _est(ci: dict | None) -> str:
    return "-" if ci is None else with_ci(ci["value"], ci)


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
        pr = doc["probing"]
        out["probing"] = {"n_topics": pr["n_topics"], **pr["mean_accuracy"], "accuracy_ci": pr.get("mean_accuracy_ci")}
    if "absorption" in doc:
        out["absorption"] = doc["absorption"]["summary"]
    return out


def checks_markdown(doc: dict, plot_names: list[str]) -> str:
    summary = checks_summary(doc)
    figs = "\n\n".join(f"![{n}]({n})" for n in plot_names)
    body = "\n".join(f"- {line}" for line in checks_lines(summary))
    names = "specificity, sensitivity, completeness, sparse probing" + (", absorption" if "absorption" in doc else "")
    sections = [f"## Checks: {names}\n\n{body}\n"]
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
            f"| {f['feature']} | {f['label'] or '-'} | {f['n_english']} | {short_ci(f['recall'], f.get('recall_ci'))} | "
            f"{short_ci(f['false_positive_rate'], f.get('false_positive_rate_ci'))} |"
            for f in top
        )
        sections.append(
            f"**en -> {lang}**, the features firing on most English articles (recall and false-positive "
            "rate with Wilson's 95% interval over the articles):\n\n"
            f"| feature | label | English articles | recall | false-positive rate |\n"
            f"|---|---|---|---|---|\n{rows}\n"
        )
    sp = doc.get("specificity")
    if sp and "features" in sp:
        rows = "\n".join(
            f"| {f['feature']} | {f['label']} | {short_ci(f['spearman'], f.get('spearman_ci'))} | "
            + " | ".join(
                short_ci(v, ci)
                for v, ci in zip(
                    f["high_rated_share_by_bin"],
                    f.get("high_rated_share_by_bin_ci") or [None] * len(f["high_rated_share_by_bin"]),
                    strict=True,
                )
            )
            + " |"
            for f in sp["features"]
        )
        sections.append(
            "**specificity** per feature (Spearman, 95% interval over its contexts; share rated 2-3 per "
            "activation bin, Wilson's interval):\n\n"
            "| feature | label | Spearman | "
            + " | ".join(sp["bins"])
            + " |\n|---|---|---|"
            + "---|" * len(sp["bins"])
            + f"\n{rows}\n"
        )
    if ab := doc.get("absorption"):
        rows = "\n".join(
            f"| {r['letter']} | {r['probe_f1']:.2f} | {', '.join(map(str, r['main_features'])) or '-'} | "
            f"{r['n_probe_positive']} | {_est(r['absorption_fraction'])} | {_est(r['full_absorption_rate'])} | "
            + ", ".join(f"{a['word']} ({a['absorber']})" for a in r["absorbed"][:5])
            + " |"
            for r in ab["letters"]
            if r["included"]
        )
        sections.append(
            "**absorption** per letter (letters whose probe F1 is under "
            f"{ab['spec']['min_probe_f1']} left out):\n\n"
            "| letter | probe F1 | main latents | words | absorption fraction | full absorption | absorbed (latent) |\n"
            f"|---|---|---|---|---|---|---|\n{rows}\n"
        )
    sections.append("Definitions and formulas: docs/checks.md.\n\n" + figs)
    return "\n".join(sections)
