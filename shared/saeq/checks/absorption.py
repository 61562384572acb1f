"""First-letter feature absorption (Chanin et al. 2024, "A is for Absorption"; SAEBench's task):
when a latent seems to mean "starts with L", on which L-words does it stay silent while another
latent, pointing the same way, carries the letter instead?

Per letter, on the words' activations (one row per word, taken at the word's own token):
1. A logistic probe on the raw activations, trained on the train words, says "starts with L"
   (its test F1 is reported; letters below `min_probe_f1` are left out: the model itself does not
   carry the letter there).
2. k-sparse probing finds the SAE's main latents for L: latents ranked by their standardised mean
   difference (L-words minus the rest, train words), a balanced logistic regression on the top k,
   and k grows while the test F1 rises by at least F1_JUMP.
3. On each test L-word the probe calls positive, with u the probe's unit direction, the word's
   probe projection x.u and each latent's share a_j cos(W_dec_j, u):
   - absorption fraction: the part of x.u that the main latents miss and other aligned latents
     (cos >= ABSORBER_MIN_COS, at most MAX_ABSORBERS of them) carry; 0 unless those carry at
     least MIN_PROJECTION_SHARE of x.u;
   - full absorption: no main latent fires, and the single latent projecting most onto u
     (cos >= FULL_MIN_COS) carries at least MIN_PROJECTION_SHARE of x.u.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from saeq.ml.intervals import RESAMPLES, bootstrap_mean, group_bootstrap, mean_of_proportions, resample_weights, wilson
from saeq.ml.sae import SparseAutoencoder
from saeq.specs.estimates import Estimate

# SAEBench's thresholds, so that figures compare.
F1_JUMP = 0.03
"""k-sparse probing keeps adding a latent while the test F1 rises by this much."""
ABSORBER_MIN_COS = 0.1
"""A latent can absorb (fraction) when its decoder row's cosine with the probe is at least this."""
FULL_MIN_COS = 0.025
"""The single absorbing latent of a full absorption needs at least this cosine."""
MIN_PROJECTION_SHARE = 0.4
"""Absorbing latents must carry at least this share of the word's probe projection."""
MAX_ABSORBERS = 3
EPS = 1e-8
MAX_LISTED = 20
"""Absorbed words listed per letter, most absorbed first."""


@dataclass(frozen=True)
class AbsorbedWord:
    word: str
    fraction: float
    full: bool
    absorber: int
    """The latent projecting most onto the probe on this word."""


@dataclass
class LetterAbsorption:
    letter: str
    n_train_words: int
    n_test_words: int
    probe_f1: float
    """Test F1 of the raw-activation probe for "starts with the letter"."""
    included: bool
    """probe_f1 reached min_probe_f1: the letter counts in the means."""
    main_features: list[int] = field(default_factory=list)
    main_f1: float | None = None
    """Test F1 of the k-sparse probe on the main latents."""
    n_probe_positive: int = 0
    """Test words of the letter the probe calls positive: the words absorption is measured on."""
    n_full: int = 0
    """Of those, the words fully absorbed."""
    absorption_fraction: Estimate | None = None
    """Mean absorption fraction over those words, bootstrap over them."""
    full_absorption_rate: Estimate | None = None
    """Share of those words fully absorbed, Wilson."""
    absorbed: list[AbsorbedWord] = field(default_factory=list)
    word_fractions: list[float] = field(default_factory=list, repr=False)
    """Each measured word's absorption fraction (not in the report: the mean and `absorbed` are)."""

    def to_dict(self) -> dict:
        return {
            "letter": self.letter,
            "n_train_words": self.n_train_words,
            "n_test_words": self.n_test_words,
            "probe_f1": self.probe_f1,
            "included": self.included,
            "main_features": self.main_features,
            "main_f1": self.main_f1,
            "n_probe_positive": self.n_probe_positive,
            "n_full": self.n_full,
            "absorption_fraction": _json(self.absorption_fraction),
            "full_absorption_rate": _json(self.full_absorption_rate),
            "absorbed": [vars(a) for a in self.absorbed],
        }


def _json(e: Estimate | None) -> dict | None:
    return None if e is None else e.model_dump(mode="json")


@dataclass
class AbsorptionResult:
    letters: list[LetterAbsorption]
    mean_absorption_fraction: Estimate
    """Mean over the included letters of each letter's mean fraction; bootstrap over each
    letter's words (stratified)."""
    mean_full_absorption_rate: Estimate
    """Mean over the included letters of each letter's rate; each letter's count resampled."""
    mean_n_main_features: float | None
    mean_n_main_features_ci: Estimate | None = None
    """Bootstrapped over the included letters."""

    def summary(self) -> dict:
        included = [r for r in self.letters if r.included]
        return {
            "n_letters": len(included),
            "n_letters_left_out": len(self.letters) - len(included),
            "n_words": sum(r.n_probe_positive for r in included),
            "mean_absorption_fraction": self.mean_absorption_fraction.value,
            "mean_absorption_fraction_ci": self.mean_absorption_fraction.model_dump(mode="json"),
            "mean_full_absorption_rate": self.mean_full_absorption_rate.value,
            "mean_full_absorption_rate_ci": self.mean_full_absorption_rate.model_dump(mode="json"),
            "mean_n_main_features": self.mean_n_main_features,
            "mean_n_main_features_ci": None
            if self.mean_n_main_features_ci is None
            else self.mean_n_main_features_ci.model_dump(mode="json"),
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "letters": [r.to_dict() for r in self.letters]}


def first_letter_absorption(
    acts_ND: Tensor,
    words: list[str],
    letters: list[str],
    is_test: list[bool],
    sae: SparseAutoencoder,
    *,
    max_k: int,
    min_probe_f1: float,
    seed: int,
) -> AbsorptionResult:
    """`acts_ND`: (words, d_model) the activation at each word's token; `letters[i]` its first
    letter; `is_test[i]` whether it is a test word (the rest train the probes)."""
    n = acts_ND.shape[0]
    if not (len(words) == len(letters) == len(is_test) == n):
        raise ValueError(f"{n} activations for {len(words)} words, {len(letters)} letters, {len(is_test)} splits")
    with torch.inference_mode():
        sae = sae.eval()
        p = next(sae.parameters())
        lat_NS = sae.encode(acts_ND.to(p.device, p.dtype)).float().cpu().numpy()
        dec_SD = torch.nn.functional.normalize(sae.W_dec.detach().float().cpu(), dim=1).numpy()
    x_ND = acts_ND.float().cpu().numpy().astype(np.float64)
    letter_N, test_N = np.asarray(letters), np.asarray(is_test, dtype=bool)
    results = []
    for li, letter in enumerate(sorted(set(letters))):
        y_N = letter_N == letter
        results.append(_letter(letter, x_ND, lat_NS, dec_SD, y_N, test_N, words, max_k, min_probe_f1, seed * 1000 + li))
    return _combine(results, seed)


def _letter(letter, x_ND, lat_NS, dec_SD, y_N, test_N, words, max_k, min_probe_f1, seed) -> LetterAbsorption:
    train, test = ~test_N, test_N
    n_train, n_test = int((y_N & train).sum()), int((y_N & test).sum())
    if n_train < 2 or n_test < 1 or (~y_N & train).sum() < 2:
        return LetterAbsorption(letter, n_train, n_test, math.nan, False)
    # The probe on standardised activations, mapped back to a direction in activation space.
    mu_D, sd_D = x_ND[train].mean(0), x_ND[train].std(0) + 1e-6
    probe = LogisticRegression(max_iter=2000).fit((x_ND[train] - mu_D) / sd_D, y_N[train])
    w_D = probe.coef_[0] / sd_D
    score_N = x_ND @ w_D + (probe.intercept_[0] - mu_D @ w_D)
    probe_f1 = float(_f1(y_N[test], score_N[test] > 0))
    out = LetterAbsorption(letter, n_train, n_test, probe_f1, probe_f1 >= min_probe_f1)
    if not out.included:
        return out
    out.main_features, out.main_f1 = _main_latents(lat_NS, y_N, train, test, max_k)
    words_W = np.flatnonzero(y_N & test & (score_N > 0))
    out.n_probe_positive = len(words_W)
    if not len(words_W):
        return out
    u_D = w_D / np.linalg.norm(w_D)
    fraction_W, full_W, top_W = word_absorption(x_ND[words_W] @ u_D, lat_NS[words_W], dec_SD @ u_D, out.main_features)
    out.word_fractions = [float(f) for f in fraction_W]
    out.absorption_fraction = group_bootstrap(
        lambda W_RG: (W_RG @ fraction_W) / W_RG.sum(1), len(words_W), unit="words", seed=seed
    )
    out.n_full = int(full_W.sum())
    out.full_absorption_rate = wilson(out.n_full, len(words_W), unit="words")
    order = np.argsort(-fraction_W, kind="stable")
    out.absorbed = [
        AbsorbedWord(words[words_W[i]], float(fraction_W[i]), bool(full_W[i]), int(top_W[i]))
        for i in order[:MAX_LISTED]
        if fraction_W[i] > 0 or full_W[i]
    ]
    return out


def _main_latents(lat_NS, y_N, train, test, max_k) -> tuple[list[int], float]:
    """The top-k latents by standardised mean difference, k grown while the test F1 jumps."""
    lat_train = lat_NS[train]
    sd_S = lat_train.std(0)
    diff_S = (lat_train[y_N[train]].mean(0) - lat_train[~y_N[train]].mean(0)) / np.where(sd_S > 0, sd_S, np.inf)
    ranked = np.argsort(-diff_S, kind="stable")[:max_k]
    best, chosen = -math.inf, []
    for k in range(1, len(ranked) + 1):
        feats = ranked[:k]
        clf = LogisticRegression(max_iter=500, class_weight="balanced").fit(lat_NS[train][:, feats], y_N[train])
        f1 = float(_f1(y_N[test], clf.predict(lat_NS[test][:, feats])))
        if f1 <= best + F1_JUMP:
            break
        best, chosen = f1, [int(f) for f in feats]
    return chosen, best


def _f1(y_N: np.ndarray, pred_N: np.ndarray) -> float:
    tp = float((y_N & pred_N).sum())
    wrong = float((y_N != pred_N).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def word_absorption(proj_W, lat_WS, cos_S, main: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per word: absorption fraction, whether fully absorbed, and the latent projecting most.
    `proj_W` (W,) each word's probe projection x.u; `lat_WS` (W, d_sae) its latents;
    `cos_S` (d_sae,) each decoder row's cosine with u; `main` the letter's main latents."""
    share_WS = lat_WS * cos_S  # each latent's part of the reconstruction's projection on u
    main_W = share_WS[:, main].sum(1)
    can_absorb_WS = (share_WS > 0) & (cos_S >= ABSORBER_MIN_COS)
    can_absorb_WS[:, main] = False
    absorbers_W = np.sort(np.where(can_absorb_WS, share_WS, 0.0), axis=1)[:, -MAX_ABSORBERS:].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        carried_W = absorbers_W / proj_W
        absorbed_W = np.minimum(absorbers_W, proj_W - main_W)
        partial_W = np.clip(absorbed_W / (absorbed_W + main_W), 0.0, 1.0)
    fraction_W = np.where(main_W <= 0, 1.0, partial_W)
    fraction_W = np.where((main_W >= proj_W) | ~(carried_W >= MIN_PROJECTION_SHARE), 0.0, fraction_W)
    top_W = share_WS.argmax(1)
    top_share_W = share_WS[np.arange(len(top_W)), top_W]
    main_silent_W = (lat_WS[:, main] < EPS).all(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        full_W = (
            main_silent_W
            & (cos_S[top_W] >= FULL_MIN_COS)
            & (proj_W >= 0)
            & (top_share_W / proj_W >= MIN_PROJECTION_SHARE)
        )
    return fraction_W, full_W, top_W


def _combine(results: list[LetterAbsorption], seed: int) -> AbsorptionResult:
    """Means over the included letters that have words to measure, with their intervals."""
    measured = [r for r in results if r.included and r.n_probe_positive]
    n_main = [len(r.main_features) for r in results if r.included]
    if measured:
        full = mean_of_proportions(
            [r.n_full for r in measured], [r.n_probe_positive for r in measured], unit="words", seed=seed
        )
    else:
        full = Estimate(value=math.nan, low=math.nan, high=math.nan, n=0, unit="words", method="bootstrap")
    mean_main = float(np.mean(n_main)) if n_main else None
    main_ci = bootstrap_mean(n_main, [1.0] * len(n_main), unit="letters", seed=seed) if n_main else None
    return AbsorptionResult(results, _stratified_mean(measured, seed), full, mean_main, main_ci)


def _stratified_mean(measured: list[LetterAbsorption], seed: int) -> Estimate:
    """The mean over letters of each letter's mean fraction; each letter's words resampled on their own."""
    n_words = sum(r.n_probe_positive for r in measured)
    if not measured:
        return Estimate(value=math.nan, low=math.nan, high=math.nan, n=0, unit="words", method="bootstrap")
    value = float(np.mean([np.mean(r.word_fractions) for r in measured]))
    boots_R = np.zeros(RESAMPLES)
    for i, r in enumerate(measured):
        f_W = np.asarray(r.word_fractions)
        boots_R += resample_weights(len(f_W), RESAMPLES, seed + i) @ f_W / len(f_W)
    low, high = np.quantile(boots_R / len(measured), [0.025, 0.975])
    return Estimate(value=value, low=float(low), high=float(high), n=n_words, unit="words", method="bootstrap")
