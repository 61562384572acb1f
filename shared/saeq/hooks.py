"""Hook point names, one convention everywhere (TransformerLens / SAELens style).

`blocks.{i}.hook_resid_post` is the residual stream after decoder block i (counted from 0); it is
transformers' `hidden_states[i + 1]`, "layer i+1". `hook_resid_pre` is the stream entering block i
(`hidden_states[i]`). `hook_mlp_out` and `hook_attn_out` are the outputs of the block's MLP and
attention before they are added to the stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

Site = Literal["resid_pre", "resid_post", "mlp_out", "attn_out"]
_NAME = re.compile(r"^blocks\.(\d{1,4})\.hook_(resid_pre|resid_post|mlp_out|attn_out)$")


@dataclass(frozen=True)
class HookPoint:
    block: int
    site: Site

    @property
    def name(self) -> str:
        return f"blocks.{self.block}.hook_{self.site}"

    @property
    def last_block_needed(self) -> int:
        """The forward pass can stop after this block."""
        return self.block - 1 if self.site == "resid_pre" else self.block


def parse(name: str) -> HookPoint:
    m = _NAME.match(name)
    if not m:
        raise ValueError(
            f"{name!r} is not a hook point; expected blocks.<i>.hook_<site> with site one of "
            "resid_pre, resid_post, mlp_out, attn_out"
        )
    return HookPoint(int(m.group(1)), cast(Site, m.group(2)))  # the pattern admits the four sites only
