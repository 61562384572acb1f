"""Activations with known features (a ground truth for SAEs): more unit features than dimensions
(superposition), Zipf-like firing probabilities, correlated groups, parent/child hierarchies and
noise, each token x = sum_i m_i f_i + bias + noise. The definitions follow SAELens's SynthSAEBench
data (sae_lens.synthetic), written anew; saeq.checks.recovery scores an SAE against them."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


def own_seed(seed: int, part: str) -> int:
    """The torch seed of one part (`features`, `batches`) of a generator seeded `seed`: hashed, so
    never the plain `seed` an SAE's initialisation draws from. With plain seeds, SyntheticConfig(seed=0)
    drew its features as the very randn(F, D) an SAE of d_sae=F, d_in=D seeded 0 draws for its
    decoder, and the SAE started at the truth it was to be scored on."""
    return int.from_bytes(hashlib.sha256(f"saeq.ml.synthetic/{seed}/{part}".encode()).digest()[:7], "big")


@dataclass(frozen=True)
class SyntheticConfig:
    """One synthetic model; every random choice comes from `seed`."""

    n_features: int = 1024
    """True features (more than d_model: they are in superposition)."""
    d_model: int = 128
    """Dimension of the activations."""
    zipf_exponent: float = 1.0
    """Feature of rank r (from 1) fires with probability max_prob * r^-zipf_exponent ..."""
    max_prob: float = 0.3
    min_prob: float = 1e-4
    """... but never less than min_prob."""
    n_parents: int = 0
    """Hierarchies: this many parents (the most frequent features), each with `n_children`
    children (drawn from the rest); a child fires only when its parent does."""
    n_children: int = 4
    mutually_exclusive: bool = True
    """At most one child of a parent fires at a time."""
    n_groups: int = 0
    """Correlated groups of `group_size` features (not children) whose firing shares a Gaussian
    factor with correlation `group_correlation` (a Gaussian copula: the marginals are kept)."""
    group_size: int = 8
    group_correlation: float = 0.5
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.0
    """A firing feature's coefficient is |N(magnitude_mean, magnitude_std^2)|."""
    noise_std: float = 0.0
    """Isotropic Gaussian noise added to each token, per dimension."""
    bias_norm: float = 0.0
    """A constant offset of this norm on every token (random direction)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_prob <= self.max_prob <= 1:
            raise ValueError("need 0 < min_prob <= max_prob <= 1")
        rest = self.n_features - self.n_parents
        if self.n_parents * self.n_children + self.n_groups * self.group_size > rest:
            raise ValueError("the hierarchies' children and the groups need more features than there are")


@dataclass(frozen=True)
class SyntheticBatch:
    acts_BD: Tensor
    """The activations an SAE sees."""
    codes_BF: Tensor
    """Each true feature's coefficient in each token (0: not firing)."""


class SyntheticModel:
    """The fixed parts of a SyntheticConfig (features, probabilities, hierarchies, groups); sample
    batches from it with `sample` or `batches`."""

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        g = torch.Generator().manual_seed(own_seed(cfg.seed, "features"))
        F, D = cfg.n_features, cfg.d_model
        self.features_FD = torch.randn(F, D, generator=g)
        self.features_FD /= self.features_FD.norm(dim=1, keepdim=True)
        bias = torch.randn(D, generator=g)
        self.bias_D = bias / bias.norm() * cfg.bias_norm
        ranks = torch.arange(1, F + 1, dtype=torch.float64)
        self.firing_probs_F = (cfg.max_prob * ranks ** (-cfg.zipf_exponent)).clamp_min(cfg.min_prob).float()
        # Parents are the most frequent features so that a child's own (marginal) probability,
        # usually much smaller, can be kept when it is made conditional on its parent.
        others = torch.randperm(F - cfg.n_parents, generator=g) + cfg.n_parents
        n_kids = cfg.n_parents * cfg.n_children
        self.parents_H = torch.arange(cfg.n_parents)
        self.children_HC = others[:n_kids].view(cfg.n_parents, cfg.n_children)
        self.groups_GS = others[n_kids : n_kids + cfg.n_groups * cfg.group_size].view(cfg.n_groups, cfg.group_size)
        self._thresholds_F = math.sqrt(2) * torch.erfinv(2 * self.firing_probs_F.double() - 1).float()

    @property
    def hierarchy(self) -> list[tuple[int, list[int]]]:
        """(parent, its children) for each hierarchy, feature indices."""
        return [(int(p), c.tolist()) for p, c in zip(self.parents_H, self.children_HC, strict=True)]

    def sample(self, batch_size: int, generator: torch.Generator) -> SyntheticBatch:
        cfg, B = self.cfg, batch_size
        z_BF = torch.randn(B, cfg.n_features, generator=generator)
        if cfg.n_groups:
            rho = cfg.group_correlation
            shared_BG = torch.randn(B, cfg.n_groups, 1, generator=generator)
            z_BF[:, self.groups_GS] = math.sqrt(rho) * shared_BG + math.sqrt(1 - rho) * z_BF[:, self.groups_GS]
        fires_BF = z_BF < self._thresholds_F  # P(N(0,1) < t_i) = p_i
        if cfg.n_parents:
            self._children_follow_parents(fires_BF, generator)
        mags_BF = (cfg.magnitude_mean + cfg.magnitude_std * torch.randn(B, cfg.n_features, generator=generator)).abs()
        codes_BF = mags_BF * fires_BF
        acts_BD = codes_BF @ self.features_FD + self.bias_D
        if cfg.noise_std:
            acts_BD += cfg.noise_std * torch.randn(B, cfg.d_model, generator=generator)
        return SyntheticBatch(acts_BD, codes_BF)

    def _children_follow_parents(self, fires_BF: Tensor, generator: torch.Generator) -> None:
        """Redraw the children's firing given their parents', keeping each child's probability
        p_c (while the children's sum stays below the parent's p)."""
        B, (H, C) = fires_BF.shape[0], self.children_HC.shape
        parent_BH = fires_BF[:, self.parents_H]
        p_par_H, p_kid_HC = self.firing_probs_F[self.parents_H], self.firing_probs_F[self.children_HC]
        if self.cfg.mutually_exclusive:
            # One child at most: some child with probability sum(p_c) / p_parent, which one by p_c.
            any_BH = torch.rand(B, H, generator=generator) < (p_kid_HC.sum(1) / p_par_H).clamp(max=1.0)
            which_BH = torch.multinomial(p_kid_HC.repeat(B, 1), 1, generator=generator).view(B, H)
            kid_BHC = torch.zeros(B, H, C, dtype=torch.bool)
            kid_BHC.scatter_(2, which_BH.unsqueeze(2), (parent_BH & any_BH).unsqueeze(2))
        else:
            kid_BHC = parent_BH.unsqueeze(2) & (
                torch.rand(B, H, C, generator=generator) < (p_kid_HC / p_par_H.unsqueeze(1)).clamp(max=1.0)
            )
        fires_BF[:, self.children_HC.flatten()] = kid_BHC.view(B, H * C)

    def batches(self, batch_size: int, n_batches: int | None = None, *, seed: int = 1) -> Iterator[SyntheticBatch]:
        """A seeded stream of batches (another `seed` for held-out data); endless when n_batches is None."""
        g = torch.Generator().manual_seed(own_seed(seed, "batches"))
        i = 0
        while n_batches is None or i < n_batches:
            yield self.sample(batch_size, g)
            i += 1
