"""An SAE's two file formats: SAELens 6 (cfg.json + sae_weights.safetensors, loadable by
`sae_lens.SAE.load_from_disk`; saeq's own files, with saeq's architecture in its metadata) and
EleutherAI sparsify (cfg.json + sae.safetensors, TopK only). Transcoders: SAELens reads the JumpReLU
(skip-)transcoders (`jumprelu_transcoder`, `jumprelu_skip_transcoder`), sparsify the TopK ones
(`transcode`, `skip_connection`; d_out == d_in); each other pairing is saeq's own file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from saeq.specs.architectures import SAE_ARCHITECTURES

if TYPE_CHECKING:
    from saeq.ml.sae.model import SparseAutoencoder

SAELENS_VERSION = "6.0.0"  # written into exported configs: SAELens reads them as its 6.x format
SaeFormat = Literal["saelens", "sparsify"]
# SAELens' names of the rules it knows -> ours, for files SAELens wrote.
_FROM_SAELENS = {
    "topk": "topk",
    "standard": "relu",
    "jumprelu": "jumprelu",
    "jumprelu_transcoder": "jumprelu_transcoder",
    "jumprelu_skip_transcoder": "jumprelu_skip_transcoder",
}
SPARSIFY_ARCHITECTURES = ("topk", "topk_transcoder", "topk_skip_transcoder")
"""What sparsify's format holds: TopK SAEs and TopK (skip-)transcoders."""


def save_sae(sae: SparseAutoencoder, path: str | Path, format: SaeFormat, metadata: dict | None) -> Path:
    """Write `sae` into directory `path` (created). `metadata` (JSON-able): SAELens reads
    hook_name, model_name, context_size, prepend_bos from it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # target_gain: a transcoder's training-only factor, folded in (1) by the time it is saved
    sd = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items() if k != "target_gain"}
    if format == "saelens":
        cfg, tensors = _saelens_cfg(sae, metadata or {}), sd
        save_file(tensors, path / "sae_weights.safetensors")
    elif format == "sparsify":
        if sae.architecture not in SPARSIFY_ARCHITECTURES:
            raise ValueError(f"sparsify stores TopK SAEs and transcoders only, not {sae.architecture}")
        if sae.is_transcoder and sae.W_dec.shape[1] != sae.d_in:
            raise ValueError(f"sparsify's transcoders write d_in={sae.d_in} wide outputs, not {sae.W_dec.shape[1]}")
        cfg = {
            "activation": "topk",
            "expansion_factor": max(1, sae.d_sae // sae.d_in),
            # What sparsify would keep while training on: saeq's k-sparse SAEs train free rows.
            "normalize_decoder": bool(torch.allclose(sd["W_dec"].norm(dim=1), torch.ones(()), atol=1e-4)),
            "num_latents": sae.d_sae,
            "k": sae.k,
            "multi_topk": False,
            "skip_connection": "W_skip" in sd,
            "transcode": sae.is_transcoder,
            "d_in": sae.d_in,
        }
        tensors = {
            "encoder.weight": sd["W_enc"].T.contiguous(),
            "encoder.bias": sd["b_enc"],
            "W_dec": sd["W_dec"],
            "b_dec": sd["b_dec"],
            **({"W_skip": sd["W_skip"]} if "W_skip" in sd else {}),
        }
        # sparsify's cfg.json has no place for extras: the file's own metadata keeps them.
        save_file(tensors, path / "sae.safetensors", metadata={"saeq_metadata": json.dumps(metadata or {})})
    else:
        raise ValueError(f"unknown format {format!r}")
    (path / "cfg.json").write_text(json.dumps(cfg, indent=1))
    return path


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Read an SAE saved by `save_sae`, SAELens (6, and 5's standard/topk/jumprelu) or sparsify."""
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


def _saelens_cfg(sae: SparseAutoencoder, metadata: dict) -> dict:
    meta = {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": SAELENS_VERSION,
        **metadata,
        **sae.saelens_metadata(),
        "saeq_architecture": sae.architecture,
        "saeq_k": sae.k,
    }
    if sae.options():
        meta["saeq_options"] = sae.options()
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
    return cfg | sae.saelens_fields()


def _saeq_architecture(arch: str | None, meta: dict) -> str | None:
    """Ours, for a file's SAELens `architecture`: the one saeq wrote into the metadata when that is
    registered and exported under this SAELens name (batchtopk as jumprelu, a plugin's own)."""
    saved = meta.get("saeq_architecture")
    if isinstance(saved, str) and saved in SAE_ARCHITECTURES:
        from saeq.ml.sae.model import sae_class

        if sae_class(saved).saelens_name() == arch:
            return saved
    elif saved is not None and arch not in _FROM_SAELENS:
        raise ValueError(f"saeq architecture {saved!r} is not registered here (a plugin in SAEQ_PLUGINS?)")
    return _FROM_SAELENS.get(arch) if arch is not None else None


def _from_saelens(cfg: dict, sd: dict[str, Tensor]) -> SparseAutoencoder:
    from saeq.ml.sae.model import SparseAutoencoder

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
    ours = _saeq_architecture(arch, meta)
    if ours is None:
        raise ValueError(f"SAELens architecture {arch!r} is not supported (topk, standard, jumprelu)")
    k = cfg.get("k") if ours in _FROM_SAELENS.values() else meta.get("saeq_k")
    W_enc, W_dec = sd["W_enc"], sd["W_dec"]
    options: dict[str, Any] = (meta.get("saeq_options") or {}) if ours == meta.get("saeq_architecture") else {}
    if SAE_ARCHITECTURES.get(ours).transcoder:
        options = options | {"d_out": W_dec.shape[1]}
    sae = SparseAutoencoder(W_enc.shape[0], W_enc.shape[1], ours, k=k, dtype=W_enc.dtype, device="meta", **options)
    b_enc = sd.get("b_enc", torch.zeros_like(sd["b_dec"].new_empty(W_enc.shape[1])))
    if not cfg.get("apply_b_dec_to_input", True) and not sae.is_transcoder:  # shift b_enc instead
        b_enc = b_enc + sd["b_dec"] @ W_enc
    threshold = sd.get("threshold")
    if "log_threshold" in sd:
        threshold = sd["log_threshold"].exp()
    if ours == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    state: dict[str, Any] = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": sd["b_dec"]}
    for name in sae.state_dict():  # the rule's own tensors (jumprelu's and batchtopk's threshold)
        if name not in state and name != "target_gain":  # a transcoder's gain is 1 once saved
            state[name] = threshold if name == "threshold" else sd[name]
    sae.load_state_dict({k: v.contiguous() for k, v in state.items()}, assign=True)
    return sae


def _from_sparsify(cfg: dict, sd: dict[str, Tensor]) -> SparseAutoencoder:
    from saeq.ml.sae.model import SparseAutoencoder

    transcode, skip = bool(cfg.get("transcode")), bool(cfg.get("skip_connection"))
    if cfg.get("activation", "topk") != "topk" or (skip and not transcode):
        raise ValueError("only sparsify TopK autoencoders and transcoders are supported (no groupmax, no skip SAE)")
    arch = ("topk_skip_transcoder" if skip else "topk_transcoder") if transcode else "topk"
    W_enc = sd["encoder.weight"].T
    sae = SparseAutoencoder(W_enc.shape[0], W_enc.shape[1], arch, k=cfg["k"], dtype=W_enc.dtype, device="meta")
    state = {"W_enc": W_enc.contiguous(), "b_enc": sd["encoder.bias"], "W_dec": sd["W_dec"], "b_dec": sd["b_dec"]}
    if skip:
        state["W_skip"] = sd["W_skip"]
    sae.load_state_dict(state, assign=True)
    return sae
