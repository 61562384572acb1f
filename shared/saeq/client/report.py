"""What `saeq report` and `saeq labels` print: plain-text tables of an evaluation's metrics and a
label job's labels. Importing this module imports no torch and no matplotlib (the plots and the
report page are drawn by the worker, saeq.jobs.evaluate_report)."""

from __future__ import annotations

import math

from saeq.specs.estimates import Estimate
from saeq.specs.label import JUDGE_UNCALIBRATED, JudgeControl, LabelScore
from saeq.specs.label_bins import DensityBinScores
from saeq.specs.metrics import HEADLINE, checks_lines

__all__ = [
    "checks_lines",
    "density_bins_table",
    "judge_controls_lines",
    "labels_summary",
    "labels_table",
    "steer_figures_line",
    "summary_table",
]

_KIND_WORDS = {"own_vs_other": "own label vs another feature's windows", "planted": 'planted "the word X"'}


def summary_table(metrics: dict[str, float], intervals: dict[str, dict] | None = None) -> str:
    """Plain-text table for `saeq report`: each figure with its 95% interval and n where the
    evaluation has them ("0.174 [0.168, 0.180] (n=512 contexts)")."""
    intervals = intervals or {}
    width = max(len(label) for _, label, _ in HEADLINE)

    def figure(key: str, fmt: str) -> str:
        if key in intervals:
            return Estimate.model_validate(intervals[key]).text(fmt)
        return fmt.format(metrics[key])

    return "\n".join(f"{label:<{width}}  {figure(key, fmt)}" for key, label, fmt in HEADLINE if key in metrics)


def labels_table(records: list[dict], *, limit: int | None = None, scorer: str | None = None) -> str:
    """Feature | density | for each explainer: its label and one scorer's score of it, balanced
    accuracy and AUC (AUC alone for the embedding scorer; 0.5 is chance), each with its 95% interval
    over the scored windows ("0.62 [0.41, 0.80]"; the bare value for a record from before
    intervals). `scorer`: detection when any record has it, else the first scorer the records have."""
    explainers = list(dict.fromkeys(r["explainer"] for r in records))
    present = list(dict.fromkeys(k for r in records for k in r.get("scores") or {}))
    scorer = scorer or ("detection" if "detection" in present else present[0] if present else "detection")
    by_feature: dict[int, dict[str, dict]] = {}
    for r in records:
        by_feature.setdefault(r["feature"], {})[r["explainer"]] = r
    header = ["feature", "density"]
    for e in explainers:
        header += [f"label ({e})", f"{scorer} AUC" if scorer == "embedding" else f"{scorer} bal.acc / AUC"]
    rows = []
    for f, rs in list(by_feature.items())[:limit]:
        row = [str(f), f"{next(iter(rs.values()))['density']:.2%}"]
        for e in explainers:
            r = rs.get(e)
            raw = ((r or {}).get("scores") or {}).get(scorer)
            row += [_clip(r["label"], 32) if r else "-", "-" if raw is None else _score_cell(LabelScore(**raw))]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def _score_cell(score: LabelScore) -> str:
    """'0.62 [0.41, 0.80] / 0.70 [0.55, 0.85]': balanced accuracy / AUC, or the AUC alone when
    there is no balanced accuracy (an embedding score)."""
    figures = ("auc",) if score.balanced_accuracy is None else ("balanced_accuracy", "auc")
    return " / ".join(_with_interval(getattr(score, m), score.intervals.get(m), "{:.2f}") for m in figures)


def _with_interval(value: float | None, est: Estimate | None, fmt: str) -> str:
    """The value and its bracketed interval; the value alone where there is none."""
    if value is None:
        return "-"
    if est is None or math.isnan(est.low) or math.isnan(est.high):
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(est.low)}, {fmt.format(est.high)}]"


def labels_summary(summary: dict) -> str:
    """Per explainer: the mean of each score over its labelled features, with its 95% interval over
    those features and n where the summary has them (one line per scorer), else on one line as
    before intervals; the means of a scorer whose judge failed its controls are shown apart, as
    excluded."""
    out = []
    for e, s in summary.items():
        intervals: dict[str, dict[str, dict]] = s.get("intervals") or {}
        if intervals:
            line = f"{e}: {s['n_features']} features; mean over the features scored, 95% interval over features"
            line += (
                "".join(f"\n  {k} {_means(ms, intervals.get(k, {}))}" for k, ms in s["scores"].items())
                or "\n  (no calibrated scorer)"
            )
        else:
            parts = [f"{k} {_means(ms, {})}" for k, ms in s["scores"].items()]
            line = f"{e}: {s['n_features']} features; mean " + ("; ".join(parts) or "(no calibrated scorer)")
        for k, ms in s.get("excluded", {}).items():
            line += f"\n  excluded: {k} ({ms['flag']}; its mean {_means(ms, intervals.get(k, {}))})"
        out.append(line)
    return "\n".join(out)


def _means(ms: dict, cis: dict[str, dict]) -> str:
    """'(n=16 features) auc=0.700 [0.612, 0.790]', or 'auc=0.700' without intervals."""
    text = " ".join(
        f"{m}=" + _with_interval(v, Estimate.model_validate(cis[m]) if m in cis else None, "{:.3f}")
        for m, v in ms.items()
        if m != "flag"
    )
    n = next((c["n"] for c in cis.values()), None)
    return text if n is None else f"(n={n} features) {text}"


def steer_figures_line(out: dict) -> str:
    """A steer reply's side effects, each with its 95% interval over the generated tokens where the
    reply has one: 'KL from default 0.123 [0.101, 0.150] nats/token; perplexity of the steered text
    under the unsteered model 12.3 [10.1, 15.0] (95% intervals over 32 generated tokens); 1.2 s'."""
    intervals = {k: Estimate.model_validate(v) for k, v in (out.get("intervals") or {}).items() if v is not None}
    kl = _with_interval(out.get("kl_from_default"), intervals.get("kl_from_default"), "{:.3f}")
    ppl = _with_interval(out.get("perplexity_unsteered"), intervals.get("perplexity_unsteered"), "{:.1f}")
    line = f"KL from default {kl} nats/token; perplexity of the steered text under the unsteered model {ppl}"
    n = next((e.n for e in intervals.values() if not math.isnan(e.low)), None)
    if n is not None:
        line += f" (95% intervals over {n} generated tokens)"
    if out.get("seconds") is not None:
        line += f"; {out['seconds']:.1f} s"
    return line


def density_bins_table(bins: list[dict] | None) -> str:
    """Scores per firing-rate bin: per bin and explainer, each scorer's mean AUC over the bin's
    features with its 95% interval and n; a scorer whose judge failed its controls marked `!`."""
    if bins is None:
        return "scores per density bin: none (a label job from before they were reported)"
    parsed = [DensityBinScores.model_validate(b) for b in bins]
    scorers = list(dict.fromkeys(s.scorer for b in parsed for s in b.scores))
    header = ["density bin", "eligible", "labelled", "explainer", *(f"{s} AUC" for s in scorers)]
    rows, flags = [], {}
    for b in parsed:
        name = f"{_rate(b.low)}-{_rate(b.high)}"
        explainers = list(dict.fromkeys(s.explainer for s in b.scores)) or ["-"]
        for i, e in enumerate(explainers):
            cells = {s.scorer: s for s in b.scores if s.explainer == e}
            row = [name, str(b.n_eligible), str(b.n_labelled)] if i == 0 else ["", "", ""]
            row.append(e)
            for scorer in scorers:
                sc = cells.get(scorer)
                if sc and sc.flag:
                    flags[scorer] = sc.flag
                row.append("-" if sc is None else _short(sc.auc) + (" !" if sc.flag else ""))
            rows.append(row)
    lines = [
        "scores per density bin (fraction of ordinary tokens a feature fires on): mean AUC, 95% interval "
        "over the bin's features, 0.5 is chance",
        _table(header, rows),
    ]
    lines += [f"! {scorer}: {flag}; its means say nothing about the labels" for scorer, flag in flags.items()]
    return "\n".join(lines)


def judge_controls_lines(controls: list[dict] | None) -> list[str]:
    """Each scorer's control accuracy with its interval, by kind of trial, and its verdict."""
    if controls is None:
        return ["judge controls: none (a label job from before they were run)"]
    lines = []
    for raw in controls:
        c = JudgeControl.model_validate(raw)
        kinds = "; ".join(f"{_KIND_WORDS.get(k, k)} {e.text('{:.2f}')}" for k, e in c.by_kind.items())
        # the flag repeats the accuracy printed just before it: its head is enough here
        verdict = (
            "calibrated: its scores count" if c.calibrated else c.flag if c.accuracy.n == 0 else JUDGE_UNCALIBRATED
        )
        lines.append(
            f"judge {c.judge} ({c.scorer}): control accuracy {c.accuracy.text('{:.2f}')}, chance {c.chance:g} -> "
            f"{verdict}" + (f"\n  by trial: {kinds}" if kinds else "")
        )
    return lines


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = [header, *rows]
    text = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in lines]
    return "\n".join([text[0], "-+-".join("-" * w for w in widths), *text[1:]])


def _rate(x: float) -> str:
    return f"{100 * x:g}%"


def _short(e: Estimate) -> str:
    """'0.62 [0.55, 0.70] n=8', the bounds left out when there is none."""
    if math.isnan(e.low) or math.isnan(e.high):
        return f"{e.value:.2f} n={e.n}"
    return f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}] n={e.n}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
