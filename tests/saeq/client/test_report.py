"""`saeq report` and `saeq labels` print from plain data: the text tables import no torch, no
matplotlib and nothing of the ML core, jobs or checks (those draw the report page, in the worker)."""

from __future__ import annotations

import subprocess
import sys

from saeq.client.report import (
    checks_lines,
    density_bins_table,
    judge_controls_lines,
    labels_summary,
    labels_table,
    steer_figures_line,
    summary_table,
)


def test_the_text_tables_import_no_torch_matplotlib_or_ml():
    code = (
        "import sys, saeq.client.report\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'transformers')\n"
        "         or m.startswith(('saeq.ml', 'saeq.jobs', 'saeq.checks'))]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_summary_table_shows_the_headline_metrics_in_order():
    text = summary_table({"l0": 31.96, "fvu": 0.08123, "dead_fraction": 0.0125, "not_a_headline": 1.0})
    rows = [line.rsplit(maxsplit=1) for line in text.splitlines()]
    assert [(label.strip(), value) for label, value in rows] == [
        ("FVU (ordinary tokens)", "0.0812"),
        ("L0 (mean active latents)", "31.96"),
        ("dead latents", "1.25%"),
    ]
    assert len({len(line) - len(value) for line, (_, value) in zip(text.splitlines(), rows, strict=True)}) == 1


def test_summary_table_shows_each_figure_with_its_interval_and_n():
    intervals = {
        "fvu": {"value": 0.174, "low": 0.168, "high": 0.18, "n": 512, "unit": "contexts", "method": "bootstrap"},
        "dead_fraction": {
            "value": 0.0125,
            "low": 0.009,
            "high": 0.0171,
            "n": 4608,
            "unit": "latents",
            "method": "wilson",
        },
    }
    text = summary_table({"fvu": 0.174, "l0": 31.96, "dead_fraction": 0.0125}, intervals)
    assert [tuple(part.strip() for part in line.split("  ", 1)) for line in text.splitlines()] == [
        ("FVU (ordinary tokens)", "0.1740 [0.1680, 0.1800] (n=512 contexts)"),
        ("L0 (mean active latents)", "31.96"),  # no interval given: the figure alone, as before
        ("dead latents", "1.25% [0.90%, 1.71%] (n=4,608 latents)"),
    ]


def test_labels_summary_and_checks_lines_read_plain_dicts():
    summary = {"metadata": {"n_features": 6, "scores": {"embedding": {"auc": 0.75}}}}
    assert labels_summary(summary) == "metadata: 6 features; mean embedding auc=0.750"
    probing = {"probing": {"n_topics": 3, "sae": {"1": 0.6}, "raw": {"1": 0.55, "all": 0.9}}}
    assert checks_lines(probing) == [
        "sparse probing (3 topics), accuracy by k k=1: SAE 0.600 / raw 0.550; raw, all dims 0.900"
    ]


def test_checks_lines_show_the_checks_intervals_where_the_summary_has_them():
    ci = {"value": 0.4, "low": 0.3, "high": 0.52, "n": 16, "unit": "article pairs", "method": "bootstrap"}
    sensitivity = {
        "fr": {
            "n_pairs": 16,
            "n_features": 5,
            "pooled_recall": 0.4,
            "pooled_recall_ci": ci,
            "mean_recall": 0.35,  # an older summary: no interval, the figure alone
            "mean_false_positive_rate": None,
        }
    }
    (line,) = checks_lines({"sensitivity": sensitivity})
    assert "pooled recall 0.400 [0.300, 0.520] (n=16 article pairs), mean recall 0.350," in line
    assert line.endswith("mean false-positive rate -")


def test_every_checks_figure_prints_with_its_interval():
    def est(value: float, unit: str) -> dict:
        return {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 20, "unit": unit, "method": "bootstrap"}

    summary = {
        "specificity": {
            "rater": "minilm",
            "n_features": 20,
            "n_contexts": 400,
            "mean_spearman": 0.3,
            "mean_spearman_ci": est(0.3, "features"),
            "pooled_spearman": 0.4,
            "pooled_spearman_ci": est(0.4, "features"),
            "high_rated_share_by_bin": [0.1, None, 0.5, 0.6, 0.7],
            "high_rated_share_by_bin_ci": [est(0.1, "features"), None, est(0.5, "f"), est(0.6, "f"), est(0.7, "f")],
        },
        "sensitivity": {
            "fr": {
                "n_pairs": 20,
                "n_features": 5,
                "pooled_recall": 0.4,
                "pooled_recall_ci": est(0.4, "article pairs"),
                "mean_recall": 0.35,
                "mean_recall_ci": est(0.35, "article pairs"),
                "mean_false_positive_rate": 0.2,
                "mean_false_positive_rate_ci": est(0.2, "article pairs"),
            }
        },
        "probing": {
            "n_topics": 3,
            "sae": {"1": 0.6},
            "raw": {"1": 0.55, "all": 0.9},
            "accuracy_ci": {
                "sae": {"1": est(0.6, "test documents")},
                "raw": {"1": est(0.55, "test documents"), "all": est(0.9, "test documents")},
            },
        },
    }
    specificity, sensitivity, probing = checks_lines(summary)
    assert "pooled 0.400 [0.300, 0.500] (n=20 features)" in specificity
    assert specificity.endswith(
        "(95% interval over features): 0.10 [0.00, 0.20], -, 0.50 [0.40, 0.60], 0.60 [0.50, 0.70], 0.70 [0.60, 0.80]"
    )
    assert sensitivity.endswith("mean false-positive rate 0.200 [0.100, 0.300] (n=20 article pairs)")
    assert "raw 0.550 [0.450, 0.650] (n=20 test documents)" in probing
    assert probing.endswith("raw, all dims 0.900 [0.800, 1.000] (n=20 test documents)")


def test_an_uncalibrated_judge_is_shown_flagged_and_its_means_apart():
    flag = "judge uncalibrated: scores uninformative (control accuracy 0.500 [0.402, 0.598] (n=96 trials) reaches chance 0.5)"
    est = {"value": 0.5, "low": 0.402, "high": 0.598, "n": 96, "unit": "trials", "method": "wilson"}
    controls = [
        {"scorer": "detection", "judge": "local:smollm2", "accuracy": est, "by_kind": {"planted": est},
         "chance": 0.5, "calibrated": False, "flag": flag},
        {"scorer": "embedding", "judge": "minilm", "accuracy": {**est, "value": 0.9, "low": 0.82, "high": 0.95},
         "by_kind": {}, "chance": 0.5, "calibrated": True, "flag": None},
    ]  # fmt: skip
    assert judge_controls_lines(controls) == [
        "judge local:smollm2 (detection): control accuracy 0.50 [0.40, 0.60] (n=96 trials), chance 0.5 -> "
        "judge uncalibrated: scores uninformative"
        '\n  by trial: planted "the word X" 0.50 [0.40, 0.60] (n=96 trials)',
        "judge minilm (embedding): control accuracy 0.90 [0.82, 0.95] (n=96 trials), chance 0.5 -> calibrated: "
        "its scores count",
    ]
    summary = {
        "local": {
            "n_features": 4,
            "scores": {"embedding": {"auc": 0.7}},
            "excluded": {"detection": {"auc": 0.5, "flag": flag}},
        }
    }
    assert labels_summary(summary) == (
        f"local: 4 features; mean embedding auc=0.700\n  excluded: detection ({flag}; its mean auc=0.500)"
    )
    assert judge_controls_lines(None) == ["judge controls: none (a label job from before they were run)"]


def test_density_bins_table_shows_each_bins_means_with_intervals_and_marks_a_flagged_judge():
    flag = "judge uncalibrated: scores uninformative (control accuracy 0.50)"

    def auc(value, low, high, n):
        return {"value": value, "low": low, "high": high, "n": n, "unit": "features", "method": "bootstrap"}

    bins = [
        {"low": 1e-4, "high": 1e-3, "n_eligible": 812, "n_labelled": 8, "scores": [
            {"explainer": "metadata", "scorer": "embedding", "auc": auc(0.81, 0.72, 0.9, 8)},
            {"explainer": "metadata", "scorer": "detection", "auc": auc(0.5, 0.45, 0.55, 8), "flag": flag},
        ]},
        {"low": 1e-3, "high": 1.0, "n_eligible": 3, "n_labelled": 1, "scores": [
            {"explainer": "metadata", "scorer": "embedding", "auc": auc(0.6, float("nan"), float("nan"), 1)},
        ]},
        {"low": 1.0, "high": 1.0, "n_eligible": 0, "n_labelled": 0, "scores": []},
    ]  # fmt: skip
    lines = density_bins_table(bins).splitlines()
    assert [cell.strip() for cell in lines[1].split(" | ")] == [
        "density bin",
        "eligible",
        "labelled",
        "explainer",
        "embedding AUC",
        "detection AUC",
    ]
    rows = [[cell.strip() for cell in line.split(" | ")] for line in lines[3:6]]
    assert rows[0] == ["0.01%-0.1%", "812", "8", "metadata", "0.81 [0.72, 0.90] n=8", "0.50 [0.45, 0.55] n=8 !"]
    assert rows[1] == ["0.1%-100%", "3", "1", "metadata", "0.60 n=1", "-"]  # one feature: no interval
    assert rows[2][:4] == ["100%-100%", "0", "0", "-"]
    assert lines[6] == f"! detection: {flag}; its means say nothing about the labels"
    assert density_bins_table(None).startswith("scores per density bin: none")


def test_report_prints_the_comparison_table_of_an_evaluate_job_with_compare_with():
    from saeq.client.cli_compare import compare_table
    from saeq.specs.compare import Comparison

    def e(value, low, high, n=512, unit="contexts", method="paired_bootstrap"):
        return {"value": value, "low": low, "high": high, "n": n, "unit": unit, "method": method}

    comparison = Comparison.model_validate(
        {
            "a": {"job_id": "a" * 32, "name": "topk", "architecture": "topk", "d_sae": 256},
            "b": {"job_id": "b" * 32, "name": "topk", "architecture": "topk", "d_sae": 256},
            "metrics": [
                {
                    "metric": "fvu",
                    "a": e(0.174, 0.168, 0.18, method="bootstrap"),
                    "b": e(0.171, 0.165, 0.177, method="bootstrap"),
                    "difference": e(0.003, -0.001, 0.007),
                    "better": None,
                    "verdict": "within noise",
                },
                {
                    "metric": "ce_loss_recovered",
                    "a": e(0.91, 0.9, 0.92, method="bootstrap"),
                    "b": e(0.85, 0.84, 0.86, method="bootstrap"),
                    "difference": e(0.06, 0.05, 0.07),
                    "better": "a",
                    "verdict": "A better by 0.06 [0.05, 0.07]",
                },
            ],
            "features": {
                "min_cosine": 0.7,
                "min_correlation": 0.5,
                "n_matched": 256,
                "n_alive": 200,
                "n_stable": 150,
                "stable_fraction": e(0.75, 0.69, 0.8, n=200, unit="latents", method="wilson"),
                "mean_cosine": 0.81,
                "match": [],
                "cosine": [],
                "correlation": [],
            },
        }
    )
    lines = compare_table(comparison.model_dump(mode="json")).splitlines()
    assert lines[2] == "on the same 512 contexts (paired bootstrap; dead_fraction: Newcombe over latents)"
    assert lines[3] == "no seed noise floor: this is evaluation noise only"  # a comparison without a floor
    header, fvu, ce = (line.split() for line in lines[4:7])
    assert header[:5] == ["metric", "A", "B", "A", "-"] and header[-2:] == ["floor", "verdict"]
    assert fvu[:7] == ["fvu", "0.174", "0.171", "0.003", "[-0.001,", "0.007]", "-"]
    assert " ".join(fvu[7:]) == "within noise"
    assert ce[:6] == ["ce_loss_recovered", "0.91", "0.85", "0.06", "[0.05,", "0.07]"]
    assert lines[7].startswith("stable features: 150 of A's 200 live latents, 0.750 [0.690, 0.800]")
    assert len(lines) == 8  # one width: no split line

    wider = comparison.model_dump(mode="json")
    wider["b"]["d_sae"] = 512
    wider["features"]["splits"] = {
        "narrow": "a",
        "min_cosine": 0.5,
        "n_features": 256,
        "n_split": 32,
        "split_fraction": e(0.125, 0.09, 0.17, n=256, unit="latents", method="wilson"),
        "children": {"3": [7, 9], "5": [1, 2, 4]},
    }
    split_line = compare_table(Comparison.model_validate(wider).model_dump(mode="json")).splitlines()[8]
    assert split_line == (
        "features split across widths: 32 of A's 256 have 2+ children in B (decoder cosine >= 0.5), "
        "0.125 [0.090, 0.170]"
    )


def _ci(value, low, high, n, unit):
    return {"value": value, "low": low, "high": high, "n": n, "unit": unit, "method": "bootstrap"}


def test_labels_table_shows_each_score_with_its_interval_and_an_old_record_bare():
    new = {
        "accuracy": 0.6,
        "balanced_accuracy": 0.62,
        "auc": 0.7,
        "n": 20,
        "intervals": {
            "balanced_accuracy": _ci(0.62, 0.41, 0.8, 20, "windows"),
            "auc": _ci(0.7, 0.55, 0.85, 20, "windows"),
        },
    }
    old = {"accuracy": 0.5, "balanced_accuracy": 0.5, "auc": 0.61, "n": 20}
    records = [
        {"feature": 3, "explainer": "local", "label": "fruit", "density": 0.01, "scores": {"detection": new}},
        {"feature": 3, "explainer": "metadata", "label": "food", "density": 0.01, "scores": {"detection": old}},
    ]
    header, _, row = labels_table(records).splitlines()
    assert [c.strip() for c in header.split(" | ")] == [
        "feature", "density", "label (local)", "detection bal.acc / AUC", "label (metadata)", "detection bal.acc / AUC"
    ]  # fmt: skip
    assert [c.strip() for c in row.split(" | ")] == [
        "3", "1.00%", "fruit", "0.62 [0.41, 0.80] / 0.70 [0.55, 0.85]", "food", "0.50 / 0.61"
    ]  # fmt: skip
    embedding_only = [{**records[0], "scores": {"embedding": {"accuracy": None, "balanced_accuracy": None, "auc": 0.7,
                                                             "n": 20, "intervals": {"auc": new["intervals"]["auc"]}}}}]  # fmt: skip
    header, _, row = labels_table(embedding_only).splitlines()
    assert header.split(" | ")[-1].strip() == "embedding AUC" and row.split(" | ")[-1].strip() == "0.70 [0.55, 0.85]"


def test_labels_summary_shows_each_mean_with_its_interval_and_n_the_excluded_too():
    flag = "judge uncalibrated: scores uninformative"
    summary = {
        "local": {
            "n_features": 16,
            "scores": {"embedding": {"auc": 0.7}},
            "excluded": {"detection": {"auc": 0.5, "flag": flag}},
            "intervals": {
                "embedding": {"auc": _ci(0.7, 0.612, 0.79, 16, "features")},
                "detection": {"auc": _ci(0.5, 0.45, 0.55, 16, "features")},
            },
        }
    }
    assert labels_summary(summary) == (
        "local: 16 features; mean over the features scored, 95% interval over features\n"
        "  embedding (n=16 features) auc=0.700 [0.612, 0.790]\n"
        f"  excluded: detection ({flag}; its mean (n=16 features) auc=0.500 [0.450, 0.550])"
    )


def test_steer_figures_line_shows_kl_and_perplexity_with_their_intervals():
    out = {
        "kl_from_default": 0.123,
        "perplexity_unsteered": 12.34,
        "seconds": 1.24,
        "intervals": {
            "kl_from_default": _ci(0.123, 0.101, 0.15, 32, "generated tokens"),
            "perplexity_unsteered": _ci(12.34, 10.1, 15.0, 32, "generated tokens"),
        },
    }
    assert steer_figures_line(out) == (
        "KL from default 0.123 [0.101, 0.150] nats/token; perplexity of the steered text under the unsteered "
        "model 12.3 [10.1, 15.0] (95% intervals over 32 generated tokens); 1.2 s"
    )
    old = {"kl_from_default": 0.0, "perplexity_unsteered": None, "seconds": 0.5}  # no edits, or an older worker
    assert steer_figures_line(old) == (
        "KL from default 0.000 nats/token; perplexity of the steered text under the unsteered model -; 0.5 s"
    )
