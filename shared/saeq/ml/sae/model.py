"""The sparse autoencoder: a base module holding the weights and the shared math, one subclass per
activation rule (architectures.py, or a plugin's), found by name in the spec-side registry.

    pre   = (x - b_dec) @ W_enc + b_enc        W_enc (d_in, d_sae), b_enc (d_sae,)
    acts  = rule(pre)                          topk | batchtopk | jumprelu | relu | a plugin's
    x_hat = acts @ W_dec + b_dec               W_dec (d_sae, d_in), b_dec (d_in,)

`SparseAutoencoder(d_in, d_sae, "relu")` builds the registered subclass for "relu", so callers name
the architecture and never the class. Kernels: kernels.py; files: formats.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeq.ml.sae.formats import SaeFormat, load_sae, save_sae
from saeq.ml.sae.kernels import SparseCodes, _GatherPre, _per_token, _SparseDecode
from saeq.specs.architectures import SAE_ARCHITECTURES

if TYPE_CHECKING:
    from saeq.specs import SaeConfig, TrainSpec


class SaeOutput(NamedTuple):
    recon: Tensor
    """(B, d_in) the reconstruction x_hat."""
    codes: SparseCodes | Tensor
    """SparseCodes (topk; batchtopk while training) or dense acts (B, d_sae) (the others)."""
    pre_acts: Tensor | None
    """(B, d_sae) pre-activations, kept by the dense rules only (their losses read them)."""
    aux_codes: SparseCodes | None
    """Top `aux_k` dead latents of each token by pre-activation (AuxK), when asked for."""
    mse: Tensor
    """() mean over tokens of ||x - x_hat||^2."""
    fvu: Tensor
    """() sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch."""
    l0: Tensor
    """() mean number of active (> 0) latents per token."""


# Selected entries of a sparse training pass: token rows, latent columns and values (N,), and the
# AuxK candidates (B, k_aux) as values and latent ids (empty when k_aux is 0).
Selection = tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]


def sae_class(architecture: str) -> type[SparseAutoencoder]:
    """The torch class registered for `architecture` (ValueError naming the known ones)."""
    module, _, name = SAE_ARCHITECTURES.get(architecture).model_class.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, SparseAutoencoder) and cls.architecture == architecture):
        raise TypeError(f"{module}:{name} is no SparseAutoencoder subclass with architecture {architecture!r}")
    return cls


class SparseAutoencoder(nn.Module):
    """The weights and what every rule shares. Subclasses set `architecture` and implement the rule:
    `encode` (inference) and `train_codes` (dense, with gradients), or `sparse_forward` and
    `select_train` for a rule whose training codes are sparse."""

    architecture: ClassVar[str] = ""
    """The registered name (saeq.specs.architectures)."""
    uses_k: ClassVar[bool] = False
    """Keeps k latents per token (1 <= k <= d_sae)."""
    saelens_architecture: ClassVar[str | None] = None
    """SAELens' name of the same rule, in exported cfg.json; None: `saeq:<architecture>`, a file
    only saeq (with the plugin) reads."""
    is_transcoder: ClassVar[bool] = False
    """Reads one hook point and predicts another (transcoder.py): its batches are [x | target] rows."""
    threshold: Tensor  # set by the rules that have one (jumprelu, batchtopk)

    def __new__(cls, d_in: int, d_sae: int, architecture: str | None = None, **kwargs: Any) -> SparseAutoencoder:
        if cls is SparseAutoencoder:  # named by architecture: build the registered subclass
            return object.__new__(sae_class(architecture or "topk"))  # nn.Module has no __new__ of its own
        return super().__new__(cls)

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str | None = None,
        *,
        k: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        generator: torch.Generator | None = None,
        decoder_init_norm: float = 1.0,
    ):
        super().__init__()
        if architecture is not None and architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} is architecture {self.architecture!r}, not {architecture!r}")
        if self.uses_k and not (k and 1 <= k <= d_sae):
            raise ValueError(f"{self.architecture} needs 1 <= k <= d_sae={d_sae}, got k={k}")
        self.d_in, self.d_sae = d_in, d_sae
        self.k = k if self.uses_k else None
        self.bandwidth = 0.05
        """JumpReLU: kernel width of the straight-through estimator (the trainer sets it)."""
        self.threshold_lr = 0.01
        """BatchTopK: rate of the threshold's moving average (SAELens' topk_threshold_lr)."""
        self._buffers_cache: dict = {}  # scratch tensors reused across steps (not state)
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        # Random decoder rows of one norm, the encoder their transpose (Gao et al. 2024).
        self.decoder_init_norm = decoder_init_norm
        W_dec = torch.randn(d_sae, d_in, generator=generator, dtype=dtype).to(device)
        W_dec *= decoder_init_norm / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        self.init_rule(**kw)

    def init_rule(self, *, dtype: torch.dtype, device: str | torch.device | None) -> None:
        """Add the rule's own parameters or buffers (after the four shared ones)."""

    # --- the rule: subclasses ----------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations, dense, inference rule: (B, d_in) -> (B, d_sae)."""
        raise NotImplementedError

    def train_codes(self, pre: Tensor) -> Tensor:
        """Dense training activations from pre-activations, differentiable: (B, d_sae) -> (B, d_sae)."""
        raise NotImplementedError

    def sparse_forward(self) -> bool:
        """The training forward selects entries sparsely (`select_train`) instead of `train_codes`."""
        return False

    def select_train(self, x_c: Tensor, dead_idx: Tensor | None, k_aux: int) -> Selection:
        """Sparse rules: the entries kept for the B tokens of x_c (centred), without gradients."""
        raise NotImplementedError

    def after_sparse_step(self, acts: Tensor) -> None:
        """Sparse rules: see the kept activations (N,) of a training pass (batchtopk's threshold)."""

    def loss_terms(self, x: Tensor, out: SaeOutput) -> Tensor | None:
        """The rule's own training loss beyond the MSE of `out` (the forward of x), differentiable;
        None: none (matryoshka's prefix reconstructions). The trainer adds it unweighted."""
        return None

    def options(self) -> dict[str, Any]:
        """The rule's own constructor keywords beyond k (JSON-able): files keep them, so a loaded
        SAE is built with them again."""
        return {}

    @classmethod
    def options_from_config(cls, cfg: SaeConfig) -> dict[str, Any]:
        """`options()` of the SAE a spec's SaeConfig describes."""
        return {}

    @classmethod
    def options_from_spec(cls, spec: TrainSpec, cfg: SaeConfig) -> dict[str, Any]:
        """`options()` from the whole train spec, for a rule whose options come from more than its
        SaeConfig (a crosscoder's layer count is its `activations.hooks`)."""
        return cls.options_from_config(cfg)

    def saelens_fields(self) -> dict:
        """The rule's part of an exported SAELens cfg.json."""
        return {"architecture": self.saelens_name()}

    def saelens_metadata(self) -> dict[str, Any]:
        """The rule's part of the exported cfg.json's metadata (what SAELens itself writes there)."""
        return {}

    @classmethod
    def saelens_name(cls) -> str:
        return cls.saelens_architecture or f"saeq:{cls.architecture}"

    # --- encode and decode -------------------------------------------------------------------

    def input_shift(self) -> Tensor | None:
        """What the encoder subtracts from x first: b_dec for an SAE, None for a transcoder (its
        b_dec lives in the output space)."""
        return self.b_dec

    def centred(self, x: Tensor) -> Tensor:
        """x minus the input shift: what the encoder's matrix product reads. (B, d_in)."""
        shift = self.input_shift()
        return x if shift is None else x - shift

    def split_batch(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """(input, target) of a training batch: an SAE reconstructs its input."""
        return batch, batch

    def skip_out(self, x: Tensor) -> Tensor | None:
        """A linear skip path's output from the input (skip-transcoders), None without one."""
        return None

    def output(self, x: Tensor, codes: SparseCodes) -> Tensor:
        """What the SAE puts in place of its target, from input x and its codes: (B, d_out)."""
        out = self.decode_sparse(codes)
        skip = self.skip_out(x)
        return out if skip is None else out + skip

    def pre_acts(self, x: Tensor) -> Tensor:
        """(B, d_in) -> (B, d_sae)."""
        return torch.addmm(self.b_enc, self.centred(x), self.W_enc)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """The active latents as SparseCodes, without gradients. (B, d_in) -> N entries."""
        with torch.no_grad():
            acts = self.encode(x)
            rows, latents = acts.nonzero(as_tuple=True)
            offsets = torch.searchsorted(rows, torch.arange(x.shape[0], device=x.device))
            return SparseCodes(acts[rows, latents], latents, offsets)

    def decode(self, acts: Tensor) -> Tensor:
        """(B, d_sae) dense activations -> (B, d_in)."""
        return acts @ self.W_dec + self.b_dec

    def decode_sparse(self, codes: SparseCodes, *, bias: bool = True) -> Tensor:
        """SparseCodes -> (B, d_in); differentiable in acts and W_dec, touching active rows only."""
        out = _SparseDecode.apply(codes.acts, codes.latents, codes.offsets, self.W_dec)
        assert isinstance(out, Tensor)
        return out + self.b_dec if bias else out

    def forward(self, x: Tensor, *, dead: Tensor | None = None, aux_k: int = 0) -> SaeOutput:
        """Training forward pass. (B, d_in) -> SaeOutput. `dead` (d_sae,) bool and aux_k > 0
        also return the top aux_k dead latents of each token (topk and batchtopk)."""
        pre, aux = None, None
        codes: SparseCodes | Tensor
        x, target = self.split_batch(x)
        if self.sparse_forward():
            dead_idx = None
            if dead is not None and aux_k > 0:
                dead_idx = dead.nonzero().flatten()
                if dead_idx.numel() == 0:
                    dead_idx = None
            codes, aux = self._encode_sparse_train(x, dead_idx, aux_k)
            recon = self.decode_sparse(codes)
            l0 = (codes.acts > 0).sum() / x.shape[0]
        else:
            pre = self.pre_acts(x)
            codes = self.train_codes(pre)
            recon = self.decode(codes)
            l0 = (codes > 0).sum() / x.shape[0]
        skip = self.skip_out(x)
        if skip is not None:
            recon = recon + skip
        err = F.mse_loss(recon, target, reduction="sum")  # one fused pass, forward and backward
        with torch.no_grad():
            # sum ||y - mean||^2 = sum ||y||^2 - B ||mean||^2, by the two fastest reductions
            # (y.var(0) and y.mean(0) take ~20x longer on CPU)
            mean = target.new_ones(target.shape[0]) @ target / target.shape[0]  # (d_out,)
            total = torch.linalg.vector_norm(target).square() - target.shape[0] * mean.square().sum()
        return SaeOutput(recon, codes, pre, aux, err / x.shape[0], err / total, l0)

    def _encode_sparse_train(
        self, x: Tensor, dead_idx: Tensor | None, aux_k: int
    ) -> tuple[SparseCodes, SparseCodes | None]:
        """Sparse codes with gradients, and the AuxK codes of dead latents."""
        B = x.shape[0]
        arange_B = torch.arange(B, device=x.device)
        shift = self.input_shift()  # its gradient through the encoder: see _GatherPre
        x_c = x if shift is None else x - shift.detach()
        shift = x.new_zeros(x.shape[1]) if shift is None else shift
        k_aux = min(aux_k, dead_idx.numel()) if dead_idx is not None else 0
        with torch.no_grad():
            rows, cols, vals, aux_vals, aux_idx = self.select_train(x_c, dead_idx, k_aux)
            n = rows.shape[0]
            if k_aux and aux_vals is not None and aux_idx is not None:  # one sparse backward for both
                rows = torch.cat([rows, arange_B.repeat_interleave(k_aux)])
                cols = torch.cat([cols, aux_idx.flatten()])
                vals = torch.cat([vals, aux_vals.flatten()])
        vals = _GatherPre.apply(vals, x_c, shift, self.W_enc, self.b_enc, rows, cols)
        assert isinstance(vals, Tensor)
        codes = SparseCodes(F.relu(vals[:n]), cols[:n], torch.searchsorted(rows[:n], arange_B))
        aux = None
        if k_aux:
            aux = _per_token(F.relu(vals[n:]).view(B, k_aux), cols[n:].view(B, k_aux))
        self.after_sparse_step(codes.acts.detach())
        return codes, aux

    # --- decoder norm ------------------------------------------------------------------------

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Remove from W_dec.grad its component along each (unit) decoder row."""
        if self.W_dec.grad is not None:
            g, W = self.W_dec.grad, self.W_dec
            parallel = torch.bmm(g.unsqueeze(1), W.unsqueeze(2)).view(-1, 1)  # (d_sae, 1)
            g.addcmul_(W, parallel, value=-1)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Make an SAE trained on `scale * x` take raw x: every activation is divided by scale,
        the decoder rows keep their norms. W_enc and the latent ranking are unchanged."""
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        if hasattr(self, "threshold"):
            self.threshold.div_(scale)

    # --- files -------------------------------------------------------------------------------

    def save(self, path: str | Path, format: SaeFormat = "saelens", *, metadata: dict | None = None) -> Path:
        """Write the SAE into directory `path` (created). `metadata` (JSON-able): SAELens reads
        hook_name, model_name, context_size, prepend_bos from it."""
        return save_sae(self, path, format, metadata)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
        """Read an SAE saved by `save`, SAELens (6, and 5's standard/topk/jumprelu) or sparsify."""
        return load_sae(path, device=device)
