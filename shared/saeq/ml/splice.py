"""Edit a hook point's activations during a forward pass (evaluation splices, steering).

`with splice(model, "blocks.14.hook_resid_post", edit): model(ids)` runs the model with the hook
point's output replaced by `edit(x_BTD)`. The name its callers know for `saeq.ml.hookpoints.edit`.
"""

from __future__ import annotations

from saeq.ml.hookpoints import Edit, edit

splice = edit

__all__ = ["Edit", "splice"]
