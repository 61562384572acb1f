"""The sparse autoencoder: the model and its rules (model.py, architectures.py, matryoshka.py; transcoders
in transcoder.py, crosscoders in crosscoder.py), its kernels (kernels.py) and its file formats
(formats.py). `from saeq.ml.sae import SparseAutoencoder`."""

from saeq.ml.sae.architectures import BatchTopKSae, JumpReluSae, ReluSae, TopKSae
from saeq.ml.sae.crosscoder import TopKCrosscoder
from saeq.ml.sae.formats import SAELENS_VERSION, load_sae, save_sae
from saeq.ml.sae.kernels import JumpReLU, SparseCodes, Step, stable_order
from saeq.ml.sae.matryoshka import MatryoshkaBatchTopKSae
from saeq.ml.sae.model import SaeOutput, SparseAutoencoder, sae_class
from saeq.ml.sae.transcoder import (
    JumpReluSkipTranscoder,
    JumpReluTranscoder,
    TopKSkipTranscoder,
    TopKTranscoder,
    Transcoder,
)

__all__ = [
    "SAELENS_VERSION",
    "BatchTopKSae",
    "JumpReLU",
    "JumpReluSae",
    "JumpReluSkipTranscoder",
    "JumpReluTranscoder",
    "MatryoshkaBatchTopKSae",
    "ReluSae",
    "SaeOutput",
    "SparseAutoencoder",
    "SparseCodes",
    "Step",
    "TopKCrosscoder",
    "TopKSae",
    "TopKSkipTranscoder",
    "TopKTranscoder",
    "Transcoder",
    "load_sae",
    "sae_class",
    "save_sae",
    "stable_order",
]
