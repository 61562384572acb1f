"""Compare two SAEs evaluated on the same contexts: each metric's paired difference with its 95%
interval and a verdict, and their features matched (saeq.ml.matching) with the stable fraction.

The paired bootstrap resamples the shared contexts once for both SAEs, so what the contexts
share (a hard document makes both worse) cancels out of the difference's interval; the dead
fractions are over each SAE's own latents, not paired, so their difference takes Newcombe's
interval from the two Wilson intervals. That interval is evaluation noise only: two seeds of one
config differ by more than it. The seed noise floor (seed_noise_floor, from further seeds of the
config evaluated on the same contexts) is what a difference must also exceed to be one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from scipy.stats import t as student_t
from torch import Tensor

from saeq.errors import Cancelled, InvalidSpec
from saeq.jobs.evaluate import EvalResult
from saeq.jobs.evaluate_intervals import BOOTSTRAP_SEED, group_unit, metric_statistics
from saeq.ml.intervals import paired_difference, wilson
from saeq.ml.matching import PairCorrelation, feature_splits, match_decoders
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.ml.splice import splice
from saeq.specs.compare import COMPARED_METRICS, FeatureMatching, FeatureSplits, MetricComparison
from saeq.specs.estimates import Estimate

SPLIT_MIN_COSINE = 0.5
"""A wider SAE's latent is a child of a narrower one's feature from this decoder cosine: splits
point roughly the parent's way (cos(45 degrees) = 0.71 for two children symmetric about it), and
below ~0.5 a latent is nearer another concept than a refinement of this one."""
LOWER_IS_BETTER = {"fvu": True, "mse": True, "ce_loss_recovered": False, "kl_div_with_sae": True, "dead_fraction": True}
"""Each metric's better direction; a metric not here (L0) has none: a difference is only 'higher'."""


def compare_metrics(
    a: EvalResult, b: EvalResult, noise_floor: Mapping[str, float] | None = None
) -> list[MetricComparison]:
    """COMPARED_METRICS of A against B, both evaluated on the same contexts in the same order; a
    metric's `noise_floor` (NoiseFloor.floors), where given, is what |A - B| must exceed as well."""
    if a.group_sums is None or b.group_sums is None or a.group_sum_x is None or b.group_sum_x is None:
        raise ValueError("both evaluations must keep their per-context sums")
    if a.group_sums.shape != b.group_sums.shape or a.contexts_per_group != b.contexts_per_group:
        raise InvalidSpec("the two SAEs were not evaluated on the same contexts", field="spec.compare_with")
    stats_a = metric_statistics(a.group_sums, a.group_sum_x)
    stats_b = metric_statistics(b.group_sums, b.group_sum_x)
    unit = group_unit(a.contexts_per_group)
    out = []
    for name in COMPARED_METRICS:
        if name == "dead_fraction":
            diff = newcombe_difference(a.intervals[name], b.intervals[name])
        else:
            diff = paired_difference(stats_a[name], stats_b[name], len(a.group_sums), unit=unit, seed=BOOTSTRAP_SEED)
            # The point difference as each side reports its figure (the bootstrap's own is the same sums).
            diff = diff.model_copy(update={"value": a.metrics[name] - b.metrics[name]})
        floor = None if noise_floor is None else noise_floor.get(name)
        better, text = verdict(name, diff, floor)
        out.append(
            MetricComparison(
                metric=name,
                a=a.intervals[name],
                b=b.intervals[name],
                difference=diff,
                better=better,
                verdict=text,
                floor=floor,
            )
        )
    return out


def newcombe_difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b for two independent proportions with Wilson intervals (Newcombe 1998, method 10)."""
    d = a.value - b.value
    low = d - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = d + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    return Estimate(value=d, low=low, high=high, n=a.n + b.n, unit=a.unit, method="newcombe")


def verdict(metric: str, diff: Estimate, noise_floor: float | None = None) -> tuple[Literal["a", "b"] | None, str]:
    """-> (which is better or None, the sentence): within noise when the interval holds 0 (or has
    no bounds) or |A - B| does not exceed the noise floor (None: no floor, the interval decides)."""
    ci = f"[{diff.low:.4g}, {diff.high:.4g}]"
    size = abs(diff.value)
    if math.isnan(diff.low) or diff.low <= 0.0 <= diff.high:
        return None, f"within noise (A - B = {diff.value:.4g}, interval {ci} holds 0)"
    if noise_floor is not None and not size > noise_floor:
        return None, f"within noise (|A - B| = {size:.4g} is not above the noise floor {noise_floor:.4g})"
    beyond = "" if noise_floor is None else f", above the noise floor {noise_floor:.4g}"
    lower, higher = ("a", "b") if diff.value < 0 else ("b", "a")
    if metric not in LOWER_IS_BETTER:
        return None, f"{higher.upper()} higher by {size:.4g} ({ci}{beyond})"
    better: Literal["a", "b"] = lower if LOWER_IS_BETTER[metric] else higher
    return better, f"{better.upper()} better by {size:.4g} (A - B {ci}{beyond})"


def seed_noise_floor(
    per_seed: Sequence[EvalResult],
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """(floors, sd, values) per COMPARED_METRICS metric from n >= 2 SAEs of one configuration, one a
    seed, all evaluated on the compared contexts: floor = FLOOR_STATISTIC, the |A - B| two seeds
    of the configuration stay within 95% of the time. A metric undefined (NaN) for a seed has none."""
    n = len(per_seed)
    if n < 2:
        raise ValueError(f"a seed floor needs at least 2 seeds, got {n}")
    factor = float(student_t.ppf(0.975, n - 1)) * math.sqrt(2.0)
    floors, sd, values = {}, {}, {}
    for name in COMPARED_METRICS:
        values_S = np.array([r.metrics[name] for r in per_seed], dtype=np.float64)
        values[name] = values_S.tolist()
        if np.isnan(values_S).any():
            continue
        sd[name] = float(values_S.std(ddof=1))
        floors[name] = factor * sd[name]
    return floors, sd, values


def match_features(
    sae_a: SparseAutoencoder,
    sae_b: SparseAutoencoder,
    lm: LoadedModel,
    hook: str,
    contexts: Iterable[Tensor],
    *,
    sinks: SinkReference | None,
    min_cosine: float,
    min_correlation: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> FeatureMatching:
    """A's features matched to B's on decoder cosine, each pair's activation correlation over the
    ordinary tokens of `contexts` (B, T) token ids; stable: both at least their threshold."""
    match_A, cosine_A = match_decoders(sae_a.W_dec, sae_b.W_dec)
    pairs = PairCorrelation(match_A)
    device = lm.device
    sae_a, sae_b = sae_a.to(device).eval(), sae_b.to(device).eval()
    for ids_BT in contexts:
        if should_stop():
            raise Cancelled("comparison cancelled")
        x_ND, keep_N = _hook_activations(lm, hook, ids_BT.to(device, torch.long), sinks)
        with torch.inference_mode():
            pairs.add(sae_a.encode(x_ND[keep_N]), sae_b.encode(x_ND[keep_N]))
    corr_A = pairs.correlations()
    with np.errstate(invalid="ignore"):
        stable_A = (cosine_A >= min_cosine) & (corr_A >= min_correlation)
    n_stable, n_alive = int(stable_A.sum()), int(pairs.fired_A.sum())
    splits = None
    if sae_a.d_sae != sae_b.d_sae:
        narrow, (sae_n, sae_w) = ("a", (sae_a, sae_b)) if sae_a.d_sae < sae_b.d_sae else ("b", (sae_b, sae_a))
        children = feature_splits(sae_n.W_dec, sae_w.W_dec, min_cosine=SPLIT_MIN_COSINE)
        splits = FeatureSplits(
            narrow=narrow,
            min_cosine=SPLIT_MIN_COSINE,
            n_features=sae_n.d_sae,
            n_split=len(children),
            split_fraction=wilson(len(children), sae_n.d_sae, unit="latents"),
            children=children,
        )
    return FeatureMatching(
        min_cosine=min_cosine,
        min_correlation=min_correlation,
        n_matched=int((match_A >= 0).sum()),
        n_alive=n_alive,
        n_stable=n_stable,
        stable_fraction=wilson(n_stable, n_alive, unit="latents"),
        mean_cosine=float(np.nanmean(cosine_A)),
        match=match_A.tolist(),
        cosine=cosine_A.tolist(),
        correlation=corr_A.tolist(),
        splits=splits,
    )


@torch.inference_mode()
def _hook_activations(lm: LoadedModel, hook: str, ids_BT: Tensor, sinks: SinkReference | None) -> tuple[Tensor, Tensor]:
    """(B*T, d_model) activations at `hook` and which are ordinary tokens (not sinks)."""
    captured = {}

    def capture(x):
        captured["x"] = x
        return x

    with splice(lm.model, hook, capture):
        lm.model(input_ids=ids_BT, use_cache=False)
    B, T = ids_BT.shape
    x_ND = captured["x"].float().reshape(B * T, -1)
    if sinks is None:
        return x_ND, torch.ones(B * T, dtype=torch.bool, device=x_ND.device)
    positions_N = torch.arange(T, device=x_ND.device).repeat(B)
    return x_ND, ~sink_mask(positions_N, x_ND.norm(dim=-1), sinks.median_norm, sinks.norm_factor)
