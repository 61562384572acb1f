"""Hook point names, one convention everywhere (TransformerLens / SAELens style).

`blocks.{i}.hook_resid_post` is the residual stream after decoder block i (counted from 0); it is
transformers' `hidden_states[i + 1]`, "layer i+1". `hook_resid_pre` is the stream entering block i
(`hidden_states[i]`). `hook_mlp_out` and `hook_attn_out` are the outputs of the block's MLP and
attention before they are added to the stream. `blocks.{i}.ln2.hook_normalized` (TransformerLens's
name) is what the block's MLP reads: the stream after attention, through the pre-MLP norm (a
transcoder's input; `hook_mlp_out` is what it predicts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

Site = Literal["resid_pre", "resid_post", "mlp_out", "attn_out", "ln2_normalized"]
_NAME = re.compile(r"^blocks\.(\d{1,4})\.(?:hook_(resid_pre|resid_post|mlp_out|attn_out)|(ln2)\.hook_normalized)$")


@dataclass(frozen=True)
class HookPoint:
    block: int
    site: Site

    @property
    def name(self) -> str:
        if self.site == "ln2_normalized":
            return f"blocks.{self.block}.ln2.hook_normalized"
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
            "resid_pre, resid_post, mlp_out, attn_out, or blocks.<i>.ln2.hook_normalized"
        )
    site = "ln2_normalized" if m.group(3) else m.group(2)
    return HookPoint(int(m.group(1)), cast(Site, site))  # the pattern admits the five sites only
