"""The edit functions a steer installs at the hook points (saeq.jobs.steer_edits says what each
mode does).

Conditional edits: an edit with a trigger applies at a token only while the trigger feature's
activation there exceeds its threshold. Every trigger and every activation an edit reads is taken
from the hook's activations as they arrive at that token, before any edit of that token: the edits
of one token then sum independently of their order, and no edit can switch its own trigger (or
another's) on or off at the token it edits. Edits of earlier tokens do reach it, through attention,
as they reach everything downstream.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from saeq.jobs.steer_edits import FeatureEdit, Positions, SteerSites
from saeq.ml import hookpoints
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.splice import splice


class Steering:
    """The edit functions for the hook points, tracking absolute positions across KV-cached calls:
    the first call sees the prompt (T = prompt length), later calls one new token each. Called
    directly it reads and writes one hook (an SAE's); `attached` hooks it into a model at `sites`."""

    def __init__(self, sae: SparseAutoencoder, edits: Sequence[FeatureEdit], prompt_len: int):
        self.sae, self.edits, self.prompt_len = sae, list(edits), prompt_len
        self.seen = 0  # tokens of the sequence already through the read hook
        self.written: dict[int, int] = {}  # per write site of a coder: tokens already through it
        self.triggered = 0
        """Tokens at which at least one conditional edit's trigger fired (prompt and generation)."""
        read = {e.feature for e in self.edits if e.mode not in ("add", "cap")}
        read |= {e.trigger.feature for e in self.edits if e.trigger is not None}
        self.feats = torch.tensor(sorted(read)) if read else None
        self._coeffs: list[tuple[FeatureEdit, Tensor]] = []  # each applying edit's coefficient (B, T), last read
        self._projections: dict[int, Tensor] = {}  # cap: feature -> (B, T) projection, last read

    def reset(self) -> None:
        self.seen = self.triggered = 0
        self.written = {}

    def __call__(self, x_BTD: Tensor) -> Tensor:
        self.read(x_BTD)
        return self._write(x_BTD, self.sae.W_dec, self._unit_scales())

    @contextlib.contextmanager
    def attached(self, model: torch.nn.Module, sites: SteerSites) -> Iterator[None]:
        """Read the features at `sites.read`, write the decoder's blocks at `sites.write` (add: the
        block of the feature's unit decoder row, so a crosscoder's layers share one unit vector)."""
        with contextlib.ExitStack() as stack:
            if sites.read == sites.write and len(sites.read) == 1:
                stack.enter_context(splice(model, sites.read[0], self))
            else:
                if not sites.acausal:
                    stack.enter_context(hookpoints.read(model, sites.read[0], self.read))
                W_SLD = self.sae.W_dec.view(self.sae.d_sae, len(sites.write), -1)
                unit_S = self._unit_scales()
                for i, hook in enumerate(sites.write):
                    write = functools.partial(self._write_site, i=i, hook=hook, sites=sites, W_dec_SD=W_SLD[:, i])
                    stack.enter_context(splice(model, hook, lambda x, write=write: write(x, unit_S=unit_S)))
            yield

    def read(self, x_BTD: Tensor) -> None:
        """Features and triggers at these tokens, before any edit of them -> each edit's coefficient."""
        B, T, D = x_BTD.shape
        acts: dict[int, Tensor] = {}  # of the features scaled, ablated, clamped or triggering, before any edit
        if self.feats is not None:
            acts_BTS = self.sae.encode(x_BTD.reshape(B * T, D).float()).reshape(B, T, -1)
            acts = {int(f): acts_BTS[..., int(f)] for f in self.feats}
        # cap: x's projection on each capped feature's unit decoder direction, before any edit
        self._projections = {e.feature: x_BTD.float() @ self._unit(e.feature) for e in self.edits if e.mode == "cap"}
        self._plan(B, T, x_BTD.device, acts)

    def _unit_scales(self) -> Tensor:
        """(d_sae,) 1 / each decoder row's norm: add moves along the unit row (the k-sparse SAEs
        train their rows freely, so a row's norm is not 1)."""
        return 1.0 / self.sae.W_dec.float().norm(dim=1).clamp_min(1e-12)

    def _unit(self, feature: int) -> Tensor:
        row_D = self.sae.W_dec[feature].float()
        return row_D / row_D.norm().clamp_min(1e-12)

    def _plan(self, B: int, T: int, device: torch.device, acts: dict[int, Tensor]) -> None:
        pos_T = torch.arange(self.seen, self.seen + T, device=device)
        self.seen += T
        fired_BT = torch.zeros(B, T, dtype=torch.bool, device=device)
        self._coeffs = []
        for e in self.edits:
            where_BT = self._mask(e.positions, pos_T).expand(B, T)
            if e.trigger is not None:
                where_BT = where_BT & (acts[e.trigger.feature] > e.trigger.threshold)
                fired_BT |= where_BT
            if not where_BT.any():
                continue
            if e.mode == "add":
                coeff_BT = torch.full((B, T), e.value, device=device)
            elif e.mode == "cap":  # raise the projection to the cap, along W_dec[f] (hence / its norm)
                lift_BT = (e.value - self._projections[e.feature]).clamp_min(0.0)
                coeff_BT = lift_BT / self.sae.W_dec[e.feature].float().norm().clamp_min(1e-12)
            elif e.mode == "scale":
                coeff_BT = (e.value - 1.0) * acts[e.feature]
            else:
                target = 0.0 if e.mode == "ablate" else e.value
                coeff_BT = target - acts[e.feature]
            self._coeffs.append((e, coeff_BT * where_BT))
        self.triggered += int(fired_BT.any(0).sum())

    def _write_site(
        self, x_BTD: Tensor, *, i: int, hook: str, sites: SteerSites, W_dec_SD: Tensor, unit_S: Tensor
    ) -> Tensor:
        """A coder's write site i. A crosscoder (add only) reads nothing: each site plans its own
        tokens. A transcoder's write site fires after its read hook, on the tokens it read."""
        B, T, _ = x_BTD.shape
        done = self.written.get(i, 0)
        self.written[i] = done + T
        if sites.acausal:
            self.seen = done
            self._plan(B, T, x_BTD.device, {})
        elif self.seen != done + T:
            raise RuntimeError(f"{hook} was written before {sites.read[0]} was read: the coder writes upstream")
        return self._write(x_BTD, W_dec_SD, unit_S)

    def _write(self, x_BTD: Tensor, W_dec_SD: Tensor, unit_S: Tensor | None) -> Tensor:
        """x + the sum over applying edits of coefficient x the feature's decoder row (block) W_dec_SD[f];
        add's coefficient over the row's norm when `unit_S` (1 / the full rows' norms) is given.
        Only cap and add need it; the others' coefficients are activations, which the row scales."""
        if not self._coeffs:
            return x_BTD
        delta = torch.zeros(*x_BTD.shape, device=x_BTD.device, dtype=torch.float32)
        for e, coeff_BT in self._coeffs:
            scale = float(unit_S[e.feature]) if unit_S is not None and e.mode == "add" else 1.0
            delta += (coeff_BT * scale)[..., None] * W_dec_SD[e.feature].float()
        return (x_BTD.float() + delta).to(x_BTD.dtype) if delta.any() else x_BTD

    def _mask(self, positions: Positions, pos_T: Tensor) -> Tensor:
        if positions == "all":
            return torch.ones_like(pos_T, dtype=torch.bool)
        if positions == "prompt":
            return pos_T < self.prompt_len
        return pos_T >= self.prompt_len
