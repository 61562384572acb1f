"""The offline demo, end to end, as a user would drive it: start a local stack, submit a chain of
jobs over HTTP with the Python client (each waiting on the last with depends_on), follow their
progress, print what they produced."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from saeq.checks.summary import checks_lines
from saeq.client.client import Client
from saeq.client.report import (
    density_bins_table,
    judge_controls_lines,
    labels_summary,
    labels_table,
    steer_figures_line,
    summary_table,
)
from saeq.dev.local_stack import LocalStack, StackOptions, free_port, saeq_home, stack_info_path
from saeq.specs import (
    ActivationsRef,
    Checks,
    DensityBins,
    EvaluateSpec,
    HarvestSpec,
    LabelSpec,
    SaeConfig,
    TrainedSae,
    TrainSpec,
)
from saeq.specs.estimates import Estimate

HOOK = "blocks.14.hook_resid_post"  # layer 15: transformers' hidden_states[15]
LABEL_DENSITY_EDGES = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
"""The demo labels as many features from each decade of firing rate: the most active ones (5-40% of
tokens) are the least monosemantic; the rarer ones are those a person calls interpretable."""

LIBRARY_BAR_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
"""Environment that silences the hub's and any library's tqdm bars (a file gets no bar: the job
progress of saeq.client.progress writes lines there instead)."""


def quiet_library_bars() -> None:
    """When the demo's output goes to a file or pipe (`make demo > demo.log`), no library bar
    writes carriage returns into it; a setting the user made wins."""
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        for name, value in LIBRARY_BAR_ENV.items():
            os.environ.setdefault(name, value)


def run_demo(
    *,
    tokens: int,
    train_tokens: int,
    label_features: int = 32,
    steer_query: str = "geography",
    steer_prompt: str = "Tell me about your weekend.",
    home: Path | None = None,
) -> dict:
    home = home or saeq_home() / "demo"
    with LocalStack(StackOptions(home=home, port=free_port())) as stack:
        print(f"local stack up: API {stack.url} (docs {stack.url}/docs), logs in {stack.logs}")
        client = Client(stack.url, api_key=stack.admin_key, timeout=60)
        harvest = client.submit(
            HarvestSpec(hooks=[HOOK], max_tokens=tokens), name="demo: harvest layer 15 of SmolLM2 on English Wikipedia"
        )
        train = client.submit(
            TrainSpec(
                activations=ActivationsRef(job_id=harvest["id"], hook=HOOK),
                total_tokens=train_tokens,
                saes=[SaeConfig(name="topk-8x-k32", architecture="topk", expansion_factor=8, k=32)],
            ),
            depends_on=[harvest["id"]],
            name="demo: TopK SAE, 8x width, k=32",
        )
        label = client.submit(
            LabelSpec(
                sae=TrainedSae(job_id=train["id"]),
                select=DensityBins(edges=LABEL_DENSITY_EDGES, per_bin=label_features // (len(LABEL_DENSITY_EDGES) - 1)),
                index_tokens=65_536,
                n_score_examples=8,
            ),
            depends_on=[train["id"]],
            name="demo: label features across density bins",
        )
        evaluate = client.submit(
            EvaluateSpec(sae=TrainedSae(job_id=train["id"]), checks=Checks(label_job=label["id"])),
            depends_on=[train["id"], label["id"]],
            name="demo: evaluate on held-out articles, with the checks",
        )
        print(f"submitted harvest {harvest['id']}, train {train['id']}, label {label['id']}, evaluate {evaluate['id']}")

        print(f"\n[1/5] harvest: {tokens:,} tokens of {HOOK} (layer 15) of SmolLM2-135M-Instruct")
        job = client.wait(harvest["id"], progress=sys.stdout)
        manifest = client.manifest(job["id"])
        _print_harvest(job, manifest, stack)

        print(f"\n[2/5] train: TopK SAE, 4,608 latents, k=32, {train_tokens:,} tokens")
        job = client.wait(train["id"], progress=sys.stdout)
        trained = client.manifest(job["id"])
        _print_train(job, trained)

        print(
            f"\n[3/5] label: {label_features} features drawn evenly from firing rates 0.01-0.1%, 0.1-1%, 1-10% "
            "and 10-100%, by SmolLM2 (few-shot) and by article metadata; each label scored on windows its "
            "explainer never saw"
        )
        job = client.wait(label["id"], progress=sys.stdout)
        labelled = client.manifest(job["id"])
        print(labels_table(client.labels(job["id"])))
        print(labels_summary(labelled["summary"]))
        print(
            f"detection: balanced accuracy and AUC of the judge (SmolLM2) telling activating from silent "
            f"windows given the label; 0.5 is chance.\nlabels: {_where(stack, labelled['labels_key'])}"
        )
        # Before any score is read as the label's: how well each judge does where the answer is known.
        print("control trials of the judges (each label against a window it fits and one it does not):")
        print("\n".join(judge_controls_lines(labelled.get("judge_controls"))))
        print(density_bins_table(labelled.get("density_bins")))

        print(
            "\n[4/5] evaluate: held-out articles, SAE spliced into the model; then the checks (specificity "
            "of the SmolLM2 labels as MiniLM rates them, sensitivity across en/fr/es, completeness over the chemical elements, "
            "sparse probing of topics)"
        )
        job = client.wait(evaluate["id"], progress=sys.stdout)
        report = client.manifest(job["id"])
        print(summary_table(report["metrics"], report.get("intervals")))
        c = report["counts"]
        print(
            f"{c['n_ordinary']:,} ordinary held-out tokens; {c['n_sinks_excluded']:,} attention sinks left out "
            f"and kept clean"
        )
        print("\n".join(checks_lines(report["checks"])))
        print(f"report (with plots): {_where(stack, report['report_key'])}")

        print(f"\n[5/5] steer: find a feature by label search ({steer_query!r}), clamp it during generation")
        hits = client.search_labels(label["id"], steer_query, top=3)
        for h in hits:
            auc = h["detection_auc"]
            auc_ci = h.get("detection_auc_ci")
            auc_text = (
                "-" if auc is None else Estimate.model_validate(auc_ci).text("{:.2f}") if auc_ci else f"{auc:.2f}"
            )
            # the similarity is the query's cosine to the label: exact, not an estimate
            print(
                f"  feature {h['feature']}: {h['label']!r} ({h['explainer']}), similarity {h['similarity']:.2f}, "
                f"detection AUC {auc_text}"
            )
        feature = hits[0]["feature"]
        max_act = max(r["max_activation"] for r in client.labels(label["id"]) if r["feature"] == feature)
        out = client.steer(
            {
                "sae": {"job_id": train["id"]},
                "prompt": steer_prompt,
                "max_new_tokens": 32,
                "interventions": [{"feature": feature, "mode": "clamp", "value": 2 * max_act}],
            }
        )
        # 2x the largest activation seen: enough to take over a 135M model's topic (4x breaks its grammar).
        print(f"prompt: {steer_prompt!r}; feature {feature} clamped to 2 x its max activation ({2 * max_act:.1f})")
        print(f"  default: {out['default']!r}\n  steered: {out['steered']!r}")
        print("  " + steer_figures_line(out))
        browse = f"/browse#/features/{label['id']}"
        # No key on stdout (a shared host's logs and terminals outlive the demo): say where it is.
        print(
            f"\nfeature browser of this SAE (sign in with `api_key` from {stack_info_path(home)}):\n"
            f"  {stack.url}{browse}"
        )
        if sys.stdin.isatty():
            input("The local stack stays up while you browse; press Enter to stop it. ")
        else:
            print(
                f"(the stack stops now; to browse later: .venv/bin/saeq up --home {home}, open the "
                f"feature browser link it prints, and go to {browse})"
            )
        return {
            "harvest": manifest,
            "train": trained,
            "evaluate": report,
            "label": labelled,
            "steer": out,
            "browser_url": f"{stack.url}{browse}",
        }


def _where(stack: LocalStack, key: str) -> str:
    store = stack.env()["SAEQ_STORE"]
    return f"{store[len('file://') :]}/{key}" if store.startswith("file://") else f"{store}/{key}"


def _print_harvest(job: dict, manifest: dict, stack: LocalStack) -> None:
    print(
        f"harvest {job['state']} in {job['finished_at'] - job['started_at']:.0f} s "
        f"({job['progress']['figures'].get('tokens_per_s', 0):,.0f} tokens/s)"
    )
    for hook, info in manifest["hooks"].items():
        sinks = info["sinks"]
        print(
            f"  {hook}: {info['n_tokens']:,} tokens x d_model {info['d_model']} in "
            f"{len(info['shards'])} shards ({info['dtype']}); attention sinks by the rule "
            f"'{sinks['rule']}': {sinks['n_position_zero']:,} at position 0 + "
            f"{sinks['n_norm_outliers']:,} norm outliers"
        )
    print(f"manifest: {_where(stack, job['manifest_key'])}")


def _print_train(job: dict, manifest: dict) -> None:
    from pydantic import ValidationError

    from saeq.specs.estimates import Estimate

    def figure(m: dict, key: str, fmt: str) -> str:
        """The figure with its 95% interval and n; bare in a manifest written before intervals."""
        try:
            return Estimate.model_validate(m["intervals"][key]).text(fmt)
        except (KeyError, TypeError, ValidationError):  # no intervals, or a bound stored as null
            return fmt.format(m[key])

    result = manifest["result"]
    data = result["data"]
    print(
        f"train {job['state']} in {result['wall_s']:.0f} s ({result['tokens'] / max(result['wall_s'], 1e-9):,.0f} "
        f"tokens/s), {data['epochs']:.1f} epochs over {data['train_tokens_available']:,} ordinary tokens; "
        f"attention sinks left out: {data['sinks']['train']['n_sinks']:,}"
    )
    for name, m in result["saes"].items():
        print(
            f"  {name}: held-out FVU {figure(m, 'fvu', '{:.4f}')} (ordinary tokens), L0 {figure(m, 'l0', '{:.1f}')}, "
            f"dead {figure(m, 'dead_fraction', '{:.1%}')} (target: FVU <= 0.18, dead < 5%)"
        )
        print(
            f"    SAELens format: {manifest['saes'][name]['saelens']}  sparsify: {manifest['saes'][name]['sparsify']}"
        )
