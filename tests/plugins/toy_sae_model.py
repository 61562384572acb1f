"""The torch side of the `toy` plugin: a capped ReLU, acts = min(relu(pre), CAP)."""

from __future__ import annotations

from torch import Tensor

from saeq.ml.sae import SparseAutoencoder

CAP = 10.0


class ToySae(SparseAutoencoder):
    """A dense rule with no sparsity penalty; SAELens has no such rule, so it is saved as `saeq:toy`."""

    architecture = "toy"

    def encode(self, x: Tensor) -> Tensor:
        return self.train_codes(self.pre_acts(x))

    def train_codes(self, pre: Tensor) -> Tensor:
        return pre.relu().clamp(max=CAP)
