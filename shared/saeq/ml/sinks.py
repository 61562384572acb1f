"""The attention-sink rule: the tokens SAE training and metrics leave out, and splices leave clean.

A token is a sink when it sits at position 0 of its context, OR when its activation norm exceeds
`norm_factor * median_norm`, where `median_norm` is the median norm of the non-position-0 tokens
at that hook point (the harvest measures it on its first shard and records it in the manifest).

Why (FIELD-NOTES): at SmolLM2's block 14 output, position 0 has a mean norm of ~23,800 against a
median of ~157 and holds 97% of the variance; 0.02% of the other tokens (mostly "\\n" separators)
exceed 5x the median and hold 89% of what remains. An SAE trained or scored on all tokens mostly
fits those few tokens, and a metric over all tokens hides an FVU of 0.44 behind one of 0.001.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor


@dataclass(frozen=True)
class SinkReference:
    """The sink rule's parameters at the SAE's hook point (from the harvest manifest)."""

    median_norm: float
    norm_factor: float


def sink_mask(positions: Tensor, norms: Tensor, median_norm: float, norm_factor: float) -> Tensor:
    """True where a token is a sink. positions (N,) int, norms (N,) float -> (N,) bool."""
    return (positions == 0) | (norms > norm_factor * median_norm)


def median_norm(positions: Tensor, norms: Tensor) -> float:
    """Median norm of the tokens not at position 0 (nan when there are none)."""
    rest = norms[positions != 0]
    return float(rest.median()) if rest.numel() else float("nan")


@dataclass(frozen=True)
class SinkStats:
    """How many tokens the sink rule removes at one hook point, over some tokens."""

    n_tokens: int
    n_position0: int
    n_outliers: int
    """Tokens not at position 0 with norm > norm_factor * median_norm."""
    median_norm: float
    """Reference median norm of non-position-0 tokens (the harvest's first shard)."""
    norm_factor: float

    @property
    def n_sinks(self) -> int:
        return self.n_position0 + self.n_outliers

    def merge(self, other: SinkStats) -> SinkStats:
        """Counts over both sets of tokens; the reference median of `self` is kept."""
        return SinkStats(
            self.n_tokens + other.n_tokens,
            self.n_position0 + other.n_position0,
            self.n_outliers + other.n_outliers,
            self.median_norm,
            self.norm_factor,
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"n_sinks": self.n_sinks}

    @classmethod
    def from_dict(cls, d: dict) -> SinkStats:
        return cls(
            int(d["n_tokens"]),
            int(d["n_position0"]),
            int(d["n_outliers"]),
            float(d["median_norm"]),
            float(d["norm_factor"]),
        )


def sink_stats(positions: Tensor, norms: Tensor, median: float, norm_factor: float) -> SinkStats:
    at0 = positions == 0
    outliers = ~at0 & (norms > norm_factor * median)
    return SinkStats(int(positions.numel()), int(at0.sum()), int(outliers.sum()), median, norm_factor)
