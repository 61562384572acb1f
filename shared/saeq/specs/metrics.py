"""The evaluate job's metrics as plain data: the names a person reads them by, and (below) the typed
documents a worker writes, which the client and the API read without torch."""

from __future__ import annotations

import math

from saeq.specs.estimates import Estimate

HEADLINE: list[tuple[str, str, str]] = [
    # (metric key, label, format): the report page and `saeq report` show these, in this order.
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


def checks_lines(summary: dict) -> list[str]:
    """Plain-text lines for `saeq report` and the demo."""
    lines = []
    sp = summary.get("specificity")
    if sp and "skipped" in sp:
        lines.append(f"specificity: skipped ({sp['skipped']})")
    elif sp:
        share_cis = sp.get("high_rated_share_by_bin_ci") or [None] * len(sp["high_rated_share_by_bin"])
        shares = ", ".join(short_ci(v, ci) for v, ci in zip(sp["high_rated_share_by_bin"], share_cis, strict=True))
        lines.append(
            f"specificity ({sp['rater']}, {sp['n_features']} features, {sp['n_contexts']} contexts): "
            f"mean Spearman {with_interval(sp, 'mean_spearman')}, pooled {with_interval(sp, 'pooled_spearman')}; "
            f"share rated 2-3 by activation bin 0, (0, .25], (.25, .5], (.5, .75], (.75, 1] "
            f"(95% interval over features): {shares}"
        )
        if (control := sp.get("rater_control")) is not None:  # absent in reports from before the controls
            acc = Estimate.model_validate(control["accuracy"]).text()
            verdict = sp.get("flag") or "calibrated: its ratings count"
            lines.append(
                f'  rater control accuracy (planted "the word X") {acc}, chance {control["chance"]:g} -> {verdict}'
            )
    for lang, s in (summary.get("sensitivity") or {}).items():
        lines.append(
            f"sensitivity en->{lang} ({s['n_pairs']} article pairs, {s['n_features']} features): "
            f"pooled recall {with_interval(s, 'pooled_recall')}, mean recall {with_interval(s, 'mean_recall')}, "
            f"mean false-positive rate {with_interval(s, 'mean_false_positive_rate')}"
        )
    for name, s in (summary.get("completeness") or {}).items():
        lines.append(
            f"completeness, {name}: {s['n_covered']}/{s['n_members']} members have a specific "
            f"feature ({s['n_distinct_features']} distinct features), coverage {with_interval(s, 'coverage')}"
        )
    pr = summary.get("probing")
    if pr and pr["n_topics"]:
        ks = [k for k in pr["sae"]]
        sae_ci = (pr.get("accuracy_ci") or {}).get("sae", {})
        raw_ci = (pr.get("accuracy_ci") or {}).get("raw", {})
        lines.append(
            f"sparse probing ({pr['n_topics']} topics), accuracy by k "
            + ", ".join(
                f"k={k}: SAE {with_ci(pr['sae'][k], sae_ci.get(k))} / raw {with_ci(pr['raw'][k], raw_ci.get(k))}"
                for k in ks
            )
            + f"; raw, all dims {with_ci(pr['raw']['all'], raw_ci.get('all'))}"
        )
    if ab := summary.get("absorption"):
        lines.append(
            f"absorption, first letter ({ab['n_letters']} letters, {ab['n_letters_left_out']} left out by their probe): "
            f"mean absorption fraction {with_interval(ab, 'mean_absorption_fraction')}, "
            f"full absorption {with_interval(ab, 'mean_full_absorption_rate')}, "
            f"main latents per letter {with_interval(ab, 'mean_n_main_features')}"
        )
    return lines


def with_interval(summary: dict, key: str) -> str:
    """summary[key] with its 95% interval and n when the summary has one (`<key>_ci`, an Estimate's
    fields), else the figure alone, or - for one not measured."""
    return with_ci(summary.get(key), summary.get(f"{key}_ci"))


def with_ci(value: float | None, ci: dict | None) -> str:
    """A figure to 3 decimals with its interval and n ("0.400 [0.300, 0.520] (n=16 article pairs)")."""
    return fmt_or_dash(value) if ci is None else Estimate.model_validate(ci).text()


def short_ci(value: float | None, ci: dict | None) -> str:
    """A share to 2 decimals with its interval ("0.40 [0.30, 0.52]"), for a row of several."""
    if value is None:
        return "-"
    if ci is None or math.isnan(ci["low"]) or math.isnan(ci["high"]):
        return f"{value:.2f}"
    return f"{value:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def fmt_or_dash(v) -> str:
    """A figure to 3 decimals, or - for one not measured."""
    return "-" if v is None else f"{v:.3f}"
