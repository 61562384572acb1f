"""Completeness: for each member of a closed category, is there a feature specific to it?

Feature f is specific to member m when it fires on m's contexts, with activation a = max over
them, reaches a/2 on none of the other members' contexts (a feature for the whole category, or a
part of it, is specific to no one member) and on at most `max_background_rate` of the background
documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saeq.ml.intervals import wilson


@dataclass(frozen=True)
class MemberResult:
    name: str
    covered: bool
    feature: int | None
    """The member's most specific feature: on no other member first, then the lowest background
    rate, then the highest activation."""
    activation: float
    background_rate: float | None
    n_specific: int
    """Features specific to the member."""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "covered": self.covered,
            "feature": self.feature,
            "activation": self.activation,
            "background_rate": self.background_rate,
            "n_specific": self.n_specific,
        }


def completeness(
    member_max_MS: Tensor, background_max_BS: Tensor, names: list[str], *, max_background_rate: float
) -> list[MemberResult]:
    """`member_max_MS`: (members, d_sae) largest activation over each member's contexts;
    `background_max_BS`: (documents, d_sae) over documents about none of them."""
    if member_max_MS.shape[0] != len(names):
        raise ValueError(f"{member_max_MS.shape[0]} members' activations for {len(names)} names")
    out = []
    for m, name in enumerate(names):
        acts_S = member_max_MS[m]
        firing = acts_S.nonzero()[:, 0]
        if firing.numel() == 0:
            out.append(MemberResult(name, False, None, 0.0, None, 0))
            continue
        half_F = 0.5 * acts_S[firing]
        other_members = torch.cat([member_max_MS[:m], member_max_MS[m + 1 :]])[:, firing]  # (M - 1, F)
        shared_F = (other_members >= half_F).any(0)
        n_background = max(background_max_BS.shape[0], 1)
        rate_F = (background_max_BS[:, firing] >= half_F).sum(0).double() / n_background
        specific = ~shared_F & (rate_F <= max_background_rate)
        # the most specific: not shared first, then the lowest rate, then the highest activation
        best = min(
            range(firing.numel()), key=lambda i: (bool(shared_F[i]), float(rate_F[i]), -float(acts_S[firing[i]]))
        )
        out.append(
            MemberResult(
                name,
                bool(specific.any()),
                int(firing[best]),
                float(acts_S[firing[best]]),
                float(rate_F[best]),
                int(specific.sum()),
            )
        )
    return out


def coverage_summary(results: list[MemberResult]) -> dict:
    covered = [r for r in results if r.covered]
    return {
        "n_members": len(results),
        "n_covered": len(covered),
        "coverage": len(covered) / len(results) if results else None,
        "n_distinct_features": len({r.feature for r in covered}),
        "coverage_ci": wilson(len(covered), len(results), unit="members").model_dump(mode="json") if results else None,
    }
