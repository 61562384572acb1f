"""The sparse autoencoder: one module for four activation rules, and its two file formats.

    pre   = (x - b_dec) @ W_enc + b_enc        W_enc (d_in, d_sae), b_enc (d_sae,)
    acts  = rule(pre)                          topk | batchtopk | jumprelu | relu
    x_hat = acts @ W_dec + b_dec               W_dec (d_sae, d_in), b_dec (d_in,)

TopK codes are sparse end to end: the encoder's backward and the decoder touch only the k
active latents of each token (custom autograd functions below); only the encoder's forward
matrix product is dense. Files: SAELens 6 (cfg.json + sae_weights.safetensors, loadable by
`sae_lens.SAE.load_from_disk`) and EleutherAI sparsify (cfg.json + sae.safetensors).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Architecture = Literal["topk", "batchtopk", "jumprelu", "relu"]
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "relu")
SAELENS_VERSION = "6.0.0"  # written into exported configs: SAELens reads them as its 6.x format
_PRE_MAX = 1 << 26  # pre-activations computed at once, at most (256 MB in fp32)


class SparseCodes(NamedTuple):
    """The active latents of B tokens as flat lists, a CSR matrix (B, d_sae) in effect.

    Token b owns entries offsets[b] .. offsets[b+1] (or N for the last). For TopK every token
    owns k entries, some of which may be 0 (ReLU after the top-k)."""

    acts: Tensor  # (N,) float
    latents: Tensor  # (N,) int64
    offsets: Tensor  # (B,) int64

    @property
    def rows(self) -> Tensor:
        """(N,) the token each entry belongs to."""
        n, b = self.acts.shape[0], self.offsets.shape[0]
        counts = torch.diff(self.offsets, append=self.offsets.new_tensor([n]))
        return torch.repeat_interleave(torch.arange(b, device=self.acts.device), counts)

    def to_dense(self, d_sae: int) -> Tensor:
        out = self.acts.new_zeros(self.offsets.shape[0], d_sae)  # (B, d_sae)
        out.index_put_((self.rows, self.latents), self.acts, accumulate=True)
        return out


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


class SparseAutoencoder(nn.Module):
    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: Architecture = "topk",
        *,
        k: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; one of {ARCHITECTURES}")
        if architecture in ("topk", "batchtopk") and not (k and 1 <= k <= d_sae):
            raise ValueError(f"{architecture} needs 1 <= k <= d_sae={d_sae}, got k={k}")
        self.d_in, self.d_sae, self.architecture = d_in, d_sae, architecture
        self.k = k if architecture in ("topk", "batchtopk") else None
        self.bandwidth = 0.05
        """JumpReLU: kernel width of the straight-through estimator (the trainer sets it)."""
        self.threshold_lr = 0.01
        """BatchTopK: rate of the threshold's moving average (SAELens' topk_threshold_lr)."""
        self._buffers_cache: dict = {}  # scratch tensors reused across steps (not state)
        kw = {"dtype": dtype, "device": device}
        # Random unit decoder rows, the encoder their transpose (Gao et al. 2024).
        W_dec = torch.randn(d_sae, d_in, generator=generator, dtype=dtype).to(device)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, **kw))
        elif architecture == "batchtopk":
            # Inference threshold, estimated while training (an EMA of the smallest kept act).
            self.register_buffer("threshold", torch.zeros(d_sae, **kw))

    # --- encode and decode -------------------------------------------------------------------

    def pre_acts(self, x: Tensor) -> Tensor:
        """(B, d_in) -> (B, d_sae)."""
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations, dense: (B, d_in) -> (B, d_sae). Inference rules (batchtopk uses
        its threshold, as SAELens does once it is saved)."""
        if self.architecture == "topk":
            return self.encode_sparse(x).to_dense(self.d_sae)
        pre = self.pre_acts(x)
        if self.architecture == "relu":
            return F.relu(pre)
        return pre * (pre > self.threshold)  # thresholds >= 0: a JumpReLU

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """The active latents as SparseCodes, without gradients. (B, d_in) -> N entries."""
        with torch.no_grad():
            if self.architecture == "topk":
                vals, idx, _, _ = _select_topk(
                    x - self.b_dec, self.W_enc, self.b_enc, self.k, buffers=self._buffers_cache
                )
                return _per_token(F.relu(vals), idx)
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
        return out + self.b_dec if bias else out

    def forward(self, x: Tensor, *, dead: Tensor | None = None, aux_k: int = 0) -> SaeOutput:
        """Training forward pass. (B, d_in) -> SaeOutput. `dead` (d_sae,) bool and aux_k > 0
        also return the top aux_k dead latents of each token (topk and batchtopk)."""
        pre, aux = None, None
        dead_idx = None
        if dead is not None and aux_k > 0 and self.architecture in ("topk", "batchtopk"):
            dead_idx = dead.nonzero().flatten()
            if dead_idx.numel() == 0:
                dead_idx = None
        if self.architecture == "topk" or (self.architecture == "batchtopk" and self.training):
            codes, aux = self._encode_sparse_train(x, dead_idx, aux_k)
            recon = self.decode_sparse(codes)
            l0 = (codes.acts > 0).sum() / x.shape[0]
        else:
            pre = self.pre_acts(x)
            if self.architecture == "relu":
                codes = F.relu(pre)
            elif self.architecture == "jumprelu":
                codes = JumpReLU.apply(pre, self.threshold, self.bandwidth)
            else:  # batchtopk at inference
                codes = pre * (pre > self.threshold)
            recon = self.decode(codes)
            l0 = (codes > 0).sum() / x.shape[0]
        err = F.mse_loss(recon, x, reduction="sum")  # one fused pass, forward and backward
        with torch.no_grad():
            # sum ||x - mean||^2 = sum ||x||^2 - B ||mean||^2, by the two fastest reductions
            # (x.var(0) and x.mean(0) take ~20x longer on CPU)
            mean = x.new_ones(x.shape[0]) @ x / x.shape[0]  # (d_in,)
            total = torch.linalg.vector_norm(x).square() - x.shape[0] * mean.square().sum()
        return SaeOutput(recon, codes, pre, aux, err / x.shape[0], err / total, l0)

    def _encode_sparse_train(self, x: Tensor, dead_idx: Tensor | None, aux_k: int):
        """TopK or BatchTopK codes with gradients, and the AuxK codes of dead latents."""
        B = x.shape[0]
        arange_B = torch.arange(B, device=x.device)
        x_c = x - self.b_dec.detach()  # b_dec's gradient through the encoder: see _GatherPre
        k_aux = min(aux_k, dead_idx.numel()) if dead_idx is not None else 0
        with torch.no_grad():
            if self.architecture == "topk":
                vals, idx, aux_vals, aux_idx = _select_topk(
                    x_c, self.W_enc, self.b_enc, self.k, dead_idx, k_aux, self._buffers_cache
                )
                rows, cols, vals = arange_B.repeat_interleave(self.k), idx.flatten(), vals.flatten()
            else:  # batchtopk: the B x k largest activations of the whole batch
                pre = torch.addmm(self.b_enc, x_c, self.W_enc).relu_()  # (B, d_sae)
                flat = pre.flatten().topk(B * self.k, sorted=False).indices.sort().values
                rows, cols, vals = flat // self.d_sae, flat % self.d_sae, pre.flatten()[flat]
                if k_aux:
                    aux_vals, j = pre.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
                    aux_idx = dead_idx[j]
                del pre
            n = rows.shape[0]
            if k_aux:  # one sparse backward for both sets of entries
                rows = torch.cat([rows, arange_B.repeat_interleave(k_aux)])
                cols = torch.cat([cols, aux_idx.flatten()])
                vals = torch.cat([vals, aux_vals.flatten()])
        vals = _GatherPre.apply(vals, x_c, self.b_dec, self.W_enc, self.b_enc, rows, cols)
        codes = SparseCodes(F.relu(vals[:n]), cols[:n], torch.searchsorted(rows[:n], arange_B))
        aux = None
        if k_aux:
            aux = _per_token(F.relu(vals[n:]).view(B, k_aux), cols[n:].view(B, k_aux))
        if self.architecture == "batchtopk":
            self._update_threshold(codes.acts.detach())
        return codes, aux

    @torch.no_grad()
    def _update_threshold(self, acts: Tensor) -> None:
        positive = acts[acts > 0]
        if positive.numel():
            t = self.threshold[0] * (1 - self.threshold_lr) + positive.min() * self.threshold_lr
            self.threshold.fill_(t)

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

    def save(
        self, path: str | Path, format: Literal["saelens", "sparsify"] = "saelens", *, metadata: dict | None = None
    ) -> Path:
        """Write the SAE into directory `path` (created). `metadata` (JSON-able): SAELens reads
        hook_name, model_name, context_size, prepend_bos from it."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if format == "saelens":
            cfg, tensors = _saelens_cfg(self, metadata or {}), sd
            save_file(tensors, path / "sae_weights.safetensors")
        elif format == "sparsify":
            if self.architecture != "topk":
                raise ValueError(f"sparsify stores TopK SAEs only, not {self.architecture}")
            cfg = {
                "activation": "topk",
                "expansion_factor": max(1, self.d_sae // self.d_in),
                "normalize_decoder": True,
                "num_latents": self.d_sae,
                "k": self.k,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": False,
                "d_in": self.d_in,
            }
            tensors = {
                "encoder.weight": sd["W_enc"].T.contiguous(),
                "encoder.bias": sd["b_enc"],
                "W_dec": sd["W_dec"],
                "b_dec": sd["b_dec"],
            }
            # sparsify's cfg.json has no place for extras: the file's own metadata keeps them.
            save_file(tensors, path / "sae.safetensors", metadata={"saeq_metadata": json.dumps(metadata or {})})
        else:
            raise ValueError(f"unknown format {format!r}")
        (path / "cfg.json").write_text(json.dumps(cfg, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
        """Read an SAE saved by `save`, SAELens (6, and 5's standard/topk/jumprelu) or sparsify."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_absolute():  # a relative name would be looked up in the working directory
            raise ValueError(f"{path}: an SAE is loaded from an absolute directory, never a name")
        cfg = json.loads((path / "cfg.json").read_text())
        if (path / "sae_weights.safetensors").is_file():
            sd = load_file(path / "sae_weights.safetensors", device=str(device))
            return _from_saelens(cfg, sd).eval()
        if (path / "sae.safetensors").is_file():
            sd = load_file(path / "sae.safetensors", device=str(device))
            return _from_sparsify(cfg, sd).eval()
        raise FileNotFoundError(f"{path}: neither sae_weights.safetensors (SAELens) nor sae.safetensors (sparsify)")


# --- file formats -------------------------------------------------------------------------------


def _saelens_cfg(sae: SparseAutoencoder, metadata: dict) -> dict:
    meta = {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": SAELENS_VERSION,
        **metadata,
        "saeq_architecture": sae.architecture,
        "saeq_k": sae.k,
    }
    cfg = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if sae.architecture == "topk":
        return cfg | {"k": sae.k, "rescale_acts_by_decoder_norm": False, "architecture": "topk"}
    if sae.architecture == "relu":
        return cfg | {"architecture": "standard"}
    return cfg | {"architecture": "jumprelu"}  # batchtopk is saved as JumpReLU, as SAELens does


def _from_saelens(cfg: dict, sd: dict[str, Tensor]) -> SparseAutoencoder:
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture")
    if arch is None:  # SAELens 5
        kw = cfg.get("activation_fn_kwargs") or {}
        arch = "topk" if cfg.get("activation_fn_str") == "topk" and kw.get("k") else "standard"
        cfg = cfg | ({"k": kw["k"]} if arch == "topk" else {})
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"normalize_activations={cfg['normalize_activations']!r} is not folded "
            "into the weights; fold it with SAELens first"
        )
    ours = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu"}.get(arch)
    if ours is None:
        raise ValueError(f"SAELens architecture {arch!r} is not supported (topk, standard, jumprelu)")
    k = cfg.get("k")
    if ours == "jumprelu" and meta.get("saeq_architecture") == "batchtopk":
        ours, k = "batchtopk", meta.get("saeq_k")
    W_enc, W_dec = sd["W_enc"], sd["W_dec"]
    sae = SparseAutoencoder(W_enc.shape[0], W_enc.shape[1], ours, k=k, dtype=W_enc.dtype, device="meta")
    b_enc = sd.get("b_enc", torch.zeros_like(sd["b_dec"].new_empty(W_enc.shape[1])))
    if not cfg.get("apply_b_dec_to_input", True):  # pre = x @ W_enc + b_enc: shift b_enc instead
        b_enc = b_enc + sd["b_dec"] @ W_enc
    threshold = sd.get("threshold")
    if "log_threshold" in sd:
        threshold = sd["log_threshold"].exp()
    if ours == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": sd["b_dec"]}
    if ours in ("jumprelu", "batchtopk"):
        state["threshold"] = threshold
    sae.load_state_dict({k: v.contiguous() for k, v in state.items()}, assign=True)
    return sae


def _from_sparsify(cfg: dict, sd: dict[str, Tensor]) -> SparseAutoencoder:
    if cfg.get("activation", "topk") != "topk" or cfg.get("skip_connection") or cfg.get("transcode"):
        raise ValueError("only sparsify TopK autoencoders are supported (no groupmax, skip connection or transcoder)")
    W_enc = sd["encoder.weight"].T
    sae = SparseAutoencoder(W_enc.shape[0], W_enc.shape[1], "topk", k=cfg["k"], dtype=W_enc.dtype, device="meta")
    sae.load_state_dict(
        {"W_enc": W_enc.contiguous(), "b_enc": sd["encoder.bias"], "W_dec": sd["W_dec"], "b_dec": sd["b_dec"]},
        assign=True,
    )
    return sae


# --- sparse kernels -----------------------------------------------------------------------------


def _per_token(acts_Bk: Tensor, idx_Bk: Tensor) -> SparseCodes:
    B, k = idx_Bk.shape
    offsets = torch.arange(0, B * k, k, device=idx_Bk.device)
    return SparseCodes(acts_Bk.reshape(-1), idx_Bk.reshape(-1), offsets)


def _select_topk(
    x_c: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    dead_idx: Tensor | None = None,
    aux_k: int = 0,
    buffers: dict | None = None,
):
    """Top-k pre-activations of each row, and the top aux_k among the latents `dead_idx`.
    -> vals (B, k), idx (B, k), aux_vals (B, aux_k), aux_idx (B, aux_k) (global latent ids).

    The pre-activations go into a scratch buffer kept in `buffers` across calls: a fresh
    (B, d_sae) tensor each step costs page faults worth a sixth of the matrix product on CPU.
    Rows are done in slices only when B x d_sae exceeds _PRE_MAX."""
    B, d_sae = x_c.shape[0], W_enc.shape[1]
    cuda_autocast = x_c.is_cuda and torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda") if cuda_autocast else x_c.dtype
    rows = max(1, min(B, _PRE_MAX // d_sae))
    buffers = {} if buffers is None else buffers
    key = ("pre", rows, d_sae, dtype, x_c.device)
    if key not in buffers:
        buffers.clear()
        buffers[key] = torch.empty(rows, d_sae, dtype=dtype, device=x_c.device)
    buf = buffers[key]
    vals = torch.empty(B, k, dtype=dtype, device=x_c.device)
    idx = torch.empty(B, k, dtype=torch.long, device=x_c.device)
    aux_vals = torch.empty(B, aux_k, dtype=dtype, device=x_c.device)
    aux_idx = torch.empty(B, aux_k, dtype=torch.long, device=x_c.device)
    W, b = W_enc.to(dtype), b_enc.to(dtype)
    for r0 in range(0, B, rows):
        r1 = min(r0 + rows, B)
        pre = buf[: r1 - r0]
        torch.addmm(b, x_c[r0:r1].to(dtype), W, out=pre)
        vals[r0:r1], idx[r0:r1] = _topk_rows(pre, k)
        if aux_k:
            v, i = pre.index_select(1, dead_idx).topk(aux_k, dim=1, sorted=False)
            aux_vals[r0:r1], aux_idx[r0:r1] = v, dead_idx[i]
    return vals.to(x_c.dtype), idx, aux_vals.to(x_c.dtype), aux_idx


def _topk_rows(pre: Tensor, k: int, block: int = 8) -> tuple[Tensor, Tensor]:
    """torch.topk(pre, k, dim=1) (unsorted), exactly, in about 3/4 of its time on CPU.

    Cut each row into d_sae / block strided blocks (block j: columns j, j + nb, j + 2 nb, ...).
    The k largest entries of a row lie in at most k blocks, and each such block's maximum is
    one of those k entries, so they all lie in the k blocks with the largest maxima: a top-k
    over the block maxima, then over the k x block entries of the chosen blocks."""
    R, d_sae = pre.shape
    nb = d_sae // block
    if pre.is_cuda or d_sae % block or nb < 4 * k:
        return pre.topk(k, dim=1, sorted=False)
    maxima = pre.view(R, block, nb).amax(1)  # (R, nb)
    blocks = maxima.topk(k, dim=1, sorted=False).indices  # (R, k)
    cols = (blocks.unsqueeze(-1) + nb * torch.arange(block, device=pre.device)).view(R, k * block)
    vals, j = pre.gather(1, cols).topk(k, dim=1, sorted=False)
    return vals, cols.gather(1, j)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def stable_order(latents: Tensor, d_sae: int) -> Tensor:
    """torch.argsort(latents, stable=True). On CPU, numpy's radix sort on int16 keys: about 1 ms
    for 131k entries, where torch 2.13's CPU sort takes about 190 ms (bench/train.py's shape)."""
    if latents.device.type != "cpu":
        return torch.argsort(latents, stable=True)
    keys = latents.detach().numpy().astype(np.int16 if d_sae <= np.iinfo(np.int16).max else np.int32)
    return torch.from_numpy(np.argsort(keys, kind="stable"))


def _by_latent(latents: Tensor, rows: Tensor, values: Tensor, d_sae: int, n_rows: int) -> Tensor:
    """The (d_sae, n_rows) CSR matrix with `values` at (latents, rows): entries grouped by latent,
    so S @ dense sums each latent's entries without scattering."""
    order = stable_order(latents, d_sae)
    crow = torch.zeros(d_sae + 1, dtype=torch.long, device=latents.device)
    crow[1:] = torch.bincount(latents, minlength=d_sae).cumsum(0)
    return _csr(crow, rows[order], values[order], (d_sae, n_rows))


class _GatherPre(torch.autograd.Function):
    """vals = pre[rows, cols] where pre = x_c @ W_enc + b_enc and x_c = x - b_dec, for entries
    selected (and computed) beforehand; the backward touches the selected entries only.

    x_c comes in already centred; b_dec is passed separately so its gradient through the encoder,
    -W_enc @ (column sums of the sparse gradient), costs one matrix-vector product."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, vals, x_c, b_dec, W_enc, b_enc, rows, cols):
        ctx.save_for_backward(x_c, W_enc, rows, cols)
        return vals.to(W_enc.dtype, copy=True)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):  # g (N,)
        x_c, W_enc, rows, cols = ctx.saved_tensors
        d_in, d_sae = W_enc.shape
        g = g.to(W_enc.dtype).contiguous()
        grad_x = grad_b_dec = grad_W = grad_b = None
        per_latent = torch.bincount(cols, weights=g, minlength=d_sae).to(W_enc.dtype)  # (d_sae,)
        if ctx.needs_input_grad[4]:
            grad_b = per_latent
        if ctx.needs_input_grad[2]:
            grad_b_dec = -(W_enc @ per_latent)
        if ctx.needs_input_grad[3]:
            S = _by_latent(cols, rows, g, d_sae, x_c.shape[0])  # (d_sae, B)
            grad_W = (S @ x_c.to(W_enc.dtype)).T  # (d_in, d_sae)
            grad_W = grad_W.contiguous()
        if ctx.needs_input_grad[1]:
            offsets = torch.searchsorted(rows, torch.arange(x_c.shape[0], device=rows.device))
            grad_x = F.embedding_bag(cols, W_enc.T.contiguous(), offsets, mode="sum", per_sample_weights=g)
        return None, grad_x, grad_b_dec, grad_W, grad_b, None, None


class _SparseDecode(torch.autograd.Function):
    """out[b] = sum over token b's entries of acts[n] * W_dec[latents[n]]: (N,) -> (B, d_in)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, acts, latents, offsets, W_dec):
        acts = acts.to(W_dec.dtype)
        ctx.save_for_backward(acts, latents, offsets, W_dec)
        return F.embedding_bag(latents, W_dec, offsets, mode="sum", per_sample_weights=acts)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):  # (B, d_in)
        acts, latents, offsets, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        B, N = offsets.shape[0], latents.shape[0]
        counts = torch.diff(offsets, append=offsets.new_tensor([N]))
        rows = torch.repeat_interleave(torch.arange(B, device=latents.device), counts)
        grad_acts = grad_W = None
        if ctx.needs_input_grad[0]:  # <grad_out[row], W_dec[latent]> for each entry
            grad_acts = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out, W_dec, latents, offsets, rows, 0, -1
            )
        if ctx.needs_input_grad[3]:
            grad_W = _by_latent(latents, rows, acts, W_dec.shape[0], B) @ grad_out  # (d_sae, d_in)
        return grad_acts, None, None, grad_W


def _rectangle(x: Tensor) -> Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class JumpReLU(torch.autograd.Function):
    """pre * (pre > threshold); the threshold learns through a straight-through estimator with a
    rectangle kernel of width `bandwidth` (Rajamanoharan et al. 2024, as in Gemma Scope)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        h = ctx.bandwidth
        grad_pre = (pre > threshold) * g
        grad_t = (-(threshold / h) * _rectangle((pre - threshold) / h) * g).sum(0)
        return grad_pre, grad_t, None


class Step(torch.autograd.Function):
    """1[pre > threshold] with the same estimator: the L0 penalty's path to the threshold."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        h = ctx.bandwidth
        return None, (-(1.0 / h) * _rectangle((pre - threshold) / h) * g).sum(0), None
