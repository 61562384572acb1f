"""One pass over whole documents: per document, each SAE latent's largest and mean activation and
the mean raw activation, over its ordinary tokens (attention sinks left out). A transcoder's features
are read from its input hook (the one hook given); a crosscoder's from all its layers at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saeq.errors import Cancelled, InvalidSpec
from saeq.ml.features import read_hook
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.ml.splice import CoderSplice, read_inputs

SEPARATOR = "\n\n"
"""Put before each document: position 0 is always a sink, so without it a document's first word
(often its subject, "Hydrogen is ...") would never be read."""


@dataclass
class DocumentActs:
    max_DS: Tensor
    """(D, d_sae) each latent's largest activation over the document's ordinary tokens."""
    mean_DS: Tensor
    """(D, d_sae) mean activation over the ordinary tokens."""
    raw_mean_DM: Tensor
    """(D, d_model) mean raw activation at the hook over the ordinary tokens."""
    n_ordinary_D: Tensor
    """(D,) ordinary tokens read per document."""

    def select(self, rows: list[int] | Tensor) -> DocumentActs:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return DocumentActs(self.max_DS[rows], self.mean_DS[rows], self.raw_mean_DM[rows], self.n_ordinary_D[rows])


def tokenize_documents(texts: list[str], tokenizer, *, context_len: int) -> list[list[int]]:
    """Separator + the document's first tokens, at most `context_len` in all."""
    sep = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    bodies = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [(sep + body)[:context_len] for body in bodies]


def document_activations(
    sae: SparseAutoencoder,
    lm: LoadedModel,
    hook: str,
    token_ids: list[list[int]],
    *,
    sinks: SinkReference | None,
    batch_size: int,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda docs_done: None,
    layer_hooks: Sequence[str] | None = None,
) -> DocumentActs:
    """Activations of each document (token ids, separator first). Documents are batched by length
    and right-padded; causal attention keeps padding from changing the real tokens. `layer_hooks`:
    a crosscoder's hooks (`hook` their first), its rows their activations side by side, the sinks
    by the first one's norms; the raw means are of those rows."""
    layers = CoderSplice("crosscoder", tuple(layer_hooks), tuple(layer_hooks)) if layer_hooks else None
    if sae.d_in != lm.d_model * (len(layers.reads) if layers else 1):
        raise InvalidSpec(f"the SAE reads d_in={sae.d_in} but {hook} has d_model={lm.d_model}", field="spec.sae")
    n = len(token_ids)
    sae = sae.to(lm.device).eval()
    out = DocumentActs(
        torch.zeros(n, sae.d_sae), torch.zeros(n, sae.d_sae), torch.zeros(n, sae.d_in), torch.zeros(n, dtype=torch.long)
    )
    order = sorted(range(n), key=lambda i: len(token_ids[i]))
    pad_id = lm.tokenizer.pad_token_id
    pad = pad_id if isinstance(pad_id, int) else 0  # None when the tokenizer has no pad token
    for b0 in range(0, n, batch_size):
        if should_stop():
            raise Cancelled("evaluation cancelled")
        rows = order[b0 : b0 + batch_size]
        T = max(len(token_ids[i]) for i in rows)
        ids_BT = torch.full((len(rows), T), pad, dtype=torch.long)
        real_BT = torch.zeros(len(rows), T, dtype=torch.bool)
        for j, i in enumerate(rows):
            ids_BT[j, : len(token_ids[i])] = torch.tensor(token_ids[i])
            real_BT[j, : len(token_ids[i])] = True
        with torch.inference_mode():
            if layers is None:
                x_ND = sink_ND = read_hook(lm, hook, ids_BT.to(lm.device))
            else:
                x_ND, sink_ND = read_inputs(lm.model, layers, ids_BT.to(lm.device))
            keep_N = real_BT.reshape(-1).to(x_ND.device)
            positions_N = torch.arange(T, device=x_ND.device).repeat(len(rows))
            if sinks is None:
                keep_N &= positions_N > 0
            else:
                keep_N &= ~sink_mask(positions_N, sink_ND.norm(dim=-1), sinks.median_norm, sinks.norm_factor)
            acts_BTS = sae.encode(x_ND).float().view(len(rows), T, -1)
            keep_BT1 = keep_N.view(len(rows), T, 1)
            n_B = keep_BT1.sum(1).clamp(min=1)  # (B, 1)
            idx = torch.tensor(rows)
            out.max_DS[idx] = acts_BTS.masked_fill(~keep_BT1, 0).amax(1).cpu()
            out.mean_DS[idx] = (acts_BTS * keep_BT1).sum(1).div(n_B).cpu()
            out.raw_mean_DM[idx] = (x_ND.view(len(rows), T, -1) * keep_BT1).sum(1).div(n_B).cpu()
            out.n_ordinary_D[idx] = keep_BT1.sum((1, 2)).cpu()
        on_batch(min(b0 + batch_size, n))
    return out
