"""One batch of the evaluate job's metric pass, the same for a plain SAE, a transcoder and a
crosscoder: they differ only in what they splice (saeq.ml.splice.CoderSplice), not in how the sums
are kept. A clean forward pass captures what the coder reads and replaces; the coder's output is
compared with what it replaces (reconstruction sums); the model runs with that output spliced in and
with the replaced hooks zero-ablated, and the one accounting of the model-loss sums (CE clean /
spliced / zero-ablated, KL(clean || spliced)) adds them up, in total and per context.

Attention sinks (by the first read hook's norms, as in training) are left out of every sum and stay
clean in the splices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from saeq import hooks
from saeq.errors import InvalidSpec
from saeq.jobs.evaluate_intervals import COLUMN, GROUP_COLUMNS
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.ml.splice import CoderSplice, forward_order

if TYPE_CHECKING:
    from saeq.jobs.evaluate import _Stats


def coder_splice(
    sae: SparseAutoencoder,
    lm: LoadedModel,
    hook: str,
    *,
    target_hook: str | None = None,
    layer_hooks: Sequence[str] | None = None,
) -> CoderSplice:
    """What `sae` reads and replaces in `lm`, by its kind: a transcoder reads `hook` and replaces
    `target_hook`; a crosscoder reads and replaces `layer_hooks` (`hook` their first); an SAE reads
    and replaces `hook`. InvalidSpec naming the spec field that does not fit."""
    name = lm.provenance.get("name")
    is_crosscoder = isinstance(sae, TopKCrosscoder)
    if target_hook is not None and not sae.is_transcoder:
        raise InvalidSpec(
            f"a {sae.architecture} replaces what it reads: it has no target hook", field="spec.target_hook"
        )
    if layer_hooks is not None and not is_crosscoder:
        raise InvalidSpec(f"a {sae.architecture} reads one hook, not several", field="spec.hooks")
    if is_crosscoder:
        if layer_hooks is None:
            raise InvalidSpec(
                f"a crosscoder over {sae.n_layers} hooks: which they are is unknown (spec.hooks names them)",
                field="spec.hooks",
            )
        layer_hooks = tuple(layer_hooks)
        if len(layer_hooks) != sae.n_layers or sae.d_layer != lm.d_model:
            raise InvalidSpec(
                f"the crosscoder reads {sae.n_layers} hooks of width {sae.d_layer}; "
                f"got {len(layer_hooks)} of {lm.d_model}",
                field="spec.hooks",
            )
        if hook != layer_hooks[0]:
            raise InvalidSpec(f"a crosscoder is read at its first hook {layer_hooks[0]}, not {hook}", field="spec.hook")
        _check_blocks(lm, layer_hooks, "spec.hooks")
        return CoderSplice("crosscoder", layer_hooks, layer_hooks)
    if sae.is_transcoder:
        if target_hook is None:
            raise InvalidSpec(
                f"a transcoder replaces its target hook: none is known for this {sae.architecture}",
                field="spec.target_hook",
            )
        d_out = getattr(sae, "d_out", sae.d_in)
        if (sae.d_in, d_out) != (lm.d_model, lm.d_model):
            raise InvalidSpec(
                f"the transcoder maps {sae.d_in} -> {d_out}, the hooks of {name} are {lm.d_model} wide",
                field="spec.sae",
            )
        _check_blocks(lm, (hook,), "spec.hook")
        _check_blocks(lm, (target_hook,), "spec.target_hook")
        if forward_order(hook) > forward_order(target_hook):
            raise InvalidSpec(f"{hook} comes after {target_hook} in the forward pass", field="spec.hook")
        return CoderSplice("transcoder", (hook,), (target_hook,))
    if sae.d_in != lm.d_model:
        raise InvalidSpec(
            f"the SAE reads d_in={sae.d_in} but {hook} of {name} has d_model={lm.d_model}", field="spec.sae"
        )
    _check_blocks(lm, (hook,), "spec.hook")
    return CoderSplice("sae", (hook,), (hook,))


def _check_blocks(lm: LoadedModel, names: Sequence[str], field: str) -> None:
    for h in names:
        if hooks.parse(h).block >= lm.n_layers:
            raise InvalidSpec(f"{h}: the model has {lm.n_layers} blocks", field=field)


@torch.inference_mode()
def evaluate_batch(
    sae: SparseAutoencoder, lm: LoadedModel, cs: CoderSplice, ids_BT: Tensor, sinks: SinkReference | None, s: _Stats
) -> int:
    """Add one batch of contexts (B, T) to the sums `s`; -> the sinks left out."""
    B, T = ids_BT.shape
    with cs.capture(lm.model) as seen:
        logits_clean = lm.model(input_ids=ids_BT, use_cache=False).logits.float()
    x_ND = cs.input_rows(seen)
    y_ND = x_ND if cs.reads == cs.replaces else cs.target_rows(seen)  # what the output stands in for
    positions_N = torch.arange(T, device=ids_BT.device).repeat(B)
    if sinks is None:
        keep_N = torch.ones(B * T, dtype=torch.bool, device=ids_BT.device)
    else:
        sink_norm_N = x_ND.norm(dim=-1) if len(cs.reads) == 1 else x_ND[:, : lm.d_model].norm(dim=-1)
        keep_N = ~sink_mask(positions_N, sink_norm_N, sinks.median_norm, sinks.norm_factor)
    keep_BT = keep_N.reshape(B, T)

    acts_NS = sae.encode(x_ND)
    out_ND = sae.decode(acts_NS)
    skip_ND = sae.skip_out(x_ND)
    if skip_ND is not None:
        out_ND = out_ND + skip_ND
    sums_BK = torch.zeros(B, len(GROUP_COLUMNS), dtype=torch.float64, device=ids_BT.device)
    L = len(cs.replaces)
    layer_sums_B2L = torch.zeros(B, 2 * L, dtype=torch.float64, device=ids_BT.device) if L > 1 else None
    sum_y_BD = accumulate_reconstruction(s, y_ND, out_ND, acts_NS, keep_N, positions_N, sums_BK, layer_sums_B2L)

    # Splices: ordinary tokens replaced, sinks left as they were.
    out_BTD = out_ND.reshape(B, T, -1).to(seen[cs.replaces[0]].dtype)
    keep_BT1 = keep_BT[..., None]
    with cs.replaced(lm.model, out_BTD, keep_BT1):
        logits_spliced = lm.model(input_ids=ids_BT, use_cache=False).logits.float()
    with cs.zeroed(lm.model, keep_BT1):
        logits_zero = lm.model(input_ids=ids_BT, use_cache=False).logits.float()
    add_model_loss(s, ids_BT, keep_BT, {"clean": logits_clean, "sae": logits_spliced, "zero": logits_zero}, sums_BK)
    s.add_contexts(sums_BK, sum_y_BD, layer_sums_B2L)
    return int((~keep_N).sum())


def add_model_loss(s: _Stats, ids_BT: Tensor, keep_BT: Tensor, logits: Mapping[str, Tensor], sums_BK: Tensor) -> None:
    """The model-loss sums of one batch: CE of each of `logits` ("clean", "sae": the coder spliced,
    "zero": its replaced hooks zero-ablated), KL(clean || each other), over next-token predictions
    from ordinary positions, into `s` and per context into `sums_BK` (B, len(GROUP_COLUMNS))."""
    # Next-token loss at position t predicts token t+1; averaged over ordinary positions t.
    loss_mask = keep_BT[:, :-1]
    targets = ids_BT[:, 1:]
    logp_clean = F.log_softmax(logits["clean"][:, :-1], dim=-1)
    for name, lg in logits.items():
        logp = F.log_softmax(lg[:, :-1], dim=-1)
        ce_BT = -logp.gather(-1, targets[..., None])[..., 0]
        s.ce[name] += float(ce_BT[loss_mask].sum())
        sums_BK[:, COLUMN[f"ce_{name}"]] = torch.where(loss_mask, ce_BT, 0).sum(1).double()
        if name != "clean":  # KL(clean || spliced), as SAELens
            kl_BT = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
            s.kl[name] += float(kl_BT[loss_mask].sum())
            sums_BK[:, COLUMN[f"kl_{name}"]] = torch.where(loss_mask, kl_BT, 0).sum(1).double()
    s.n_loss += int(loss_mask.sum())
    sums_BK[:, COLUMN["n_loss"]] = loss_mask.sum(1).double()


def accumulate_reconstruction(
    s: _Stats, x_ND, recon_ND, acts_NS, keep_N, positions_N, sums_BK, layer_sums_B2L: Tensor | None = None
) -> Tensor:
    """Add the ordinary tokens' sums to `s`, and per context to `sums_BK`; -> their sum of x per
    context (B, d). `x_ND` is what `recon_ND` stands in for (a transcoder's target); a crosscoder's
    rows are its layers side by side, each layer's squared sums kept apart too (per context in
    `layer_sums_B2L`: the L sums of ||x_l||^2, then the L of ||x_l - x_hat_l||^2)."""
    x, r, a, pos = x_ND[keep_N], recon_ND[keep_N], acts_NS[keep_N], positions_N[keep_N]
    B, T = sums_BK.shape[0], x_ND.shape[0] // sums_BK.shape[0]
    context_N = torch.arange(B, device=x_ND.device).repeat_interleave(T)[keep_N]
    resid_sq_N = (x - r).pow(2).sum(-1).double()
    x64 = x.double()
    sq_x_N = x64.pow(2).sum(-1)
    cos_N = F.cosine_similarity(x, r, dim=-1)
    s.n += x.shape[0]
    s.sum_x += x64.sum(0).cpu()
    s.sum_sq_x += float(x64.pow(2).sum())
    s.sum_sq_resid += float(resid_sq_N.sum())
    s.sum_cos += float(cos_N.sum())
    fired = a != 0
    l0_N = fired.sum(-1)
    l1_N = a.abs().sum(-1)
    s.sum_l0 += float(l0_N.sum())
    s.sum_l1 += float(a.abs().sum())
    # The first six of GROUP_COLUMNS, in its order: n, sum_sq_x, sum_sq_resid, sum_cos, sum_l0, sum_l1.
    per_token_NK = torch.stack(
        [torch.ones_like(sq_x_N), sq_x_N, resid_sq_N, cos_N.double(), l0_N.double(), l1_N.double()], 1
    )
    sums_BK[:, :6].index_add_(0, context_N, per_token_NK)
    s.fires += fired.sum(0).double().cpu()
    s.l0_all.append(l0_N.cpu())
    pos = pos.cpu()
    s.pos_n.index_add_(0, pos, torch.ones_like(pos, dtype=torch.float64))
    s.pos_sum_x.index_add_(0, pos, x64.cpu())
    s.pos_sq_x.index_add_(0, pos, x64.pow(2).sum(-1).cpu())
    s.pos_sq_resid.index_add_(0, pos, resid_sq_N.cpu())
    L = s.layer_sq_x.shape[0]
    if L > 1:  # a crosscoder's layers: (n, L, d)
        sq_x_NL = x64.view(x64.shape[0], L, -1).pow(2).sum(-1)
        resid_sq_NL = (x - r).view(x.shape[0], L, -1).pow(2).sum(-1).double()
        s.layer_sq_x += sq_x_NL.sum(0).cpu()
        s.layer_sq_resid += resid_sq_NL.sum(0).cpu()
        if layer_sums_B2L is not None:
            layer_sums_B2L.index_add_(0, context_N, torch.cat([sq_x_NL, resid_sq_NL], dim=1))
    return torch.zeros(B, x64.shape[1], dtype=torch.float64, device=x64.device).index_add_(0, context_N, x64)
