"""What `saeq report` and `saeq labels` print: plain-text tables of an evaluation's metrics and a
label job's labels. Importing this module imports no torch and no matplotlib (the plots and the
report page are drawn by the worker, saeq.jobs.evaluate_report)."""

from __future__ import annotations

import math

from saeq.specs.estimates import Estimate
from saeq.specs.label import JUDGE_UNCALIBRATED, JudgeControl
from saeq.specs.label_bins import DensityBinScores
from saeq.specs.metrics import HEADLINE, checks_lines

__all__ = [
    "checks_lines",
    "density_bins_table",
    "judge_controls_lines",
    "labels_summary",
    "labels_table",
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
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    return "\n".join(lines)


def labels_summary(summary: dict) -> str:
    """One line per explainer: mean scores over its labelled features; the means of a scorer whose
    judge failed its controls are shown apart, as excluded."""
    out = []
    for e, s in summary.items():
        parts = [f"{k} " + " ".join(f"{m}={v:.3f}" for m, v in ms.items()) for k, ms in s["scores"].items()]
        line = f"{e}: {s['n_features']} features; mean " + ("; ".join(parts) or "(no calibrated scorer)")
        for k, ms in s.get("excluded", {}).items():
            means = " ".join(f"{m}={v:.3f}" for m, v in ms.items() if m != "flag")
            line += f"\n  excluded: {k} ({ms['flag']}; its mean {means})"
        out.append(line)
    return "\n".join(out)


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


def _num(v) -> str:
    return "-" if v is None else f"{v:.2f}"
