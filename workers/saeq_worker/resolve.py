"""The inputs the job adapters share, resolved from a spec: published manifests, the SAE a train
job wrote and what it reads (model, hook, held-out corpus, sink rule), the model kept loaded, chat
endpoints and their response cache in the store. Adapters import this, never one another."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import TypeAdapter

from saeq import keys
from saeq.errors import InvalidSpec, NotFound
from saeq.ml.llm import ChatEndpoint, request_digest
from saeq.ml.models import LoadedModel, load_model
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference
from saeq.platform.admission import check_local_paths, resolve_endpoint
from saeq.platform.settings import LlmEndpoint
from saeq.platform.store import AlreadyExists, MissingObject, ObjectStore
from saeq.specs import CorpusSpec, EndpointLLM, ModelSpec
from saeq.specs.manifests import HarvestManifest, M, TrainManifest, parse_manifest
from saeq_worker.celery_app import settings


@lru_cache(maxsize=2)
def _cached_model(spec: ModelSpec, device: str, cache_dir: str) -> LoadedModel:
    # Kept across jobs in this worker process: consecutive jobs often read the same model. Two, so
    # a live worker answering for two models (the builtin and a team's) does not reload per request.
    return load_model(spec, device=device, cache_dir=cache_dir)


def cached_model(spec: ModelSpec, device: str, cache_dir: str) -> LoadedModel:
    """The model `spec` names, loaded once per worker process (the two most recent kept)."""
    # A frozen pydantic model hashes at runtime; pydantic's stubs leave __hash__ None.
    return _cached_model(spec, device, cache_dir)  # pyright: ignore[reportArgumentType]


def loaded_model(spec: ModelSpec, device: str, cache_dir: str) -> tuple[LoadedModel, bool]:
    """(the model, cold): cold when this call loaded it into the process, not found it cached.
    A worker process runs one job at a time, so no other load comes between the two reads."""
    misses = _cached_model.cache_info().misses
    lm = cached_model(spec, device, cache_dir)
    return lm, _cached_model.cache_info().misses > misses


def read_published_manifest(
    store: ObjectStore, job_id: str, model: type[M], *, field: str, id_field: str | None = None
) -> M:
    """The manifest of a job whose output this job reads, as its kind's `model`; NotFound while it
    is unpublished, InvalidSpec when it is of another kind or format (saeq.specs.manifests).
    Errors name `id_field`, by default `{field}.job_id`."""
    try:
        data = store.get(keys.manifest(job_id))
    except MissingObject:
        raise NotFound(
            f"{model.KIND} job {job_id} has published no output (it does not exist, or it has "
            "not finished: list it in depends_on to wait for it)",
            field=id_field or f"{field}.job_id",
        ) from None
    return parse_manifest(data, model, job_id=job_id, field=id_field or f"{field}.job_id")


def read_harvest_manifest(store: ObjectStore, job_id: str, hook: str, *, field: str) -> HarvestManifest:
    """The published manifest of a harvest, checked to hold `hook`."""
    manifest = read_published_manifest(store, job_id, HarvestManifest, field=field)
    if hook not in manifest.hooks:
        raise InvalidSpec(
            f"harvest {job_id} has no hook {hook!r}; it has {sorted(manifest.hooks)}", field=f"{field}.hook"
        )
    return manifest


def load_trained_sae(
    store: ObjectStore, job_id: str, name: str | None, *, field: str
) -> tuple[SparseAutoencoder, str, TrainManifest]:
    """(SAE, its name, the train manifest) of a train job's output."""
    manifest = read_published_manifest(store, job_id, TrainManifest, field=field)
    name = name or next(iter(manifest.saes))
    if name not in manifest.saes:
        raise InvalidSpec(
            f"train job {job_id} has no SAE {name!r}; it has {sorted(manifest.saes)}", field=f"{field}.name"
        )
    with tempfile.TemporaryDirectory() as tmp:
        prefix = manifest.saes[name].saelens
        for info in store.list(prefix):
            store.get_file(info.key, Path(tmp, info.key.rsplit("/", 1)[1]))
        return SparseAutoencoder.load(tmp), name, manifest


@dataclass
class SaeContext:
    """An SAE and what it reads: model, hook point, held-out corpus, context length, sink rule."""

    sae: SparseAutoencoder
    name: str
    model: ModelSpec
    hook: str
    corpus: CorpusSpec | None
    """None for a steer job of an imported SAE (it reads no corpus)."""
    context_len: int
    sink_info: dict | None
    provenance: dict
    corpus_seed: int | None = None
    """Seed of the builtin corpus's document order when `corpus` is the harvest's held-out part (the
    harvest's seed, so held-out stays held out); None: the job's own seed."""
    target_hook: str | None = None
    """A transcoder's output hook (what it predicts and replaces; `hook` is what it reads)."""
    layer_hooks: tuple[str, ...] | None = None
    """A crosscoder's hooks, in the order of its input's blocks (`hook` is the first)."""

    def read_corpus(self) -> CorpusSpec:
        """The corpus an evaluate or label job reads (their specs require one for an imported SAE)."""
        if self.corpus is None:
            raise InvalidSpec("an imported SAE needs a corpus to read", field="spec.corpus")
        return self.corpus

    def seed(self, spec_seed: int) -> int:
        return spec_seed if self.corpus_seed is None else self.corpus_seed


def sae_context(spec, store: ObjectStore) -> SaeContext:
    """For a spec with `sae`, `model`, `hook` and maybe `corpus` and `context_len` (evaluate,
    label, steer): what the spec names, falling back to the SAE's train and harvest manifests."""
    if spec.sae.source == "job":
        sae, name, train = load_trained_sae(store, spec.sae.job_id, spec.sae.name, field="spec.sae")
        harvest, activations = train.harvest, train.spec.get("activations", {})
        if harvest.model.get("source") == "synthetic":  # nothing for a model to run on
            raise InvalidSpec(
                f"SAE {name} of train job {spec.sae.job_id} was trained on synthetic activations (harvest "
                f"{harvest.job_id}): there is no model to run it in, so no {getattr(spec, 'kind', 'live op')}; "
                "its recovery of the true features is in that train job's manifest (result.recovery)",
                field="spec.sae",
            )
        model = spec.model or ModelSpec.model_validate(
            {k: harvest.model.get(k) for k in ("name", "revision", "gguf_file", "dtype")}
        )
        # The harvest's model passed the roots when it ran; the deployment may allow fewer since.
        check_local_paths(model, settings.local_path_roots, prefix="spec.model")
        corpus, corpus_seed = getattr(spec, "corpus", None), None
        if corpus is None:
            corpus = held_out_corpus(harvest.corpus)
            if harvest.job_id == train.job_id:  # online training read the model itself: its spec has the seed
                corpus_seed = train.spec["activations"]["seed"]
            else:
                harvested = read_published_manifest(store, harvest.job_id, HarvestManifest, field="spec.sae")
                corpus_seed = harvested.spec["seed"]
        return SaeContext(
            sae,
            name,
            model,
            spec.hook or harvest.hook,
            corpus,
            getattr(spec, "context_len", None) or harvest.context_len,
            harvest.sinks,
            {
                "source": "job",
                "job_id": spec.sae.job_id,
                "name": name,
                "architecture": sae.architecture,
                "d_sae": sae.d_sae,
            },
            corpus_seed,
            target_hook=activations.get("target_hook"),
            layer_hooks=tuple(activations["hooks"]) if activations.get("hooks") else None,
        )
    path = Path(spec.sae.path)
    if not path.is_dir():
        raise NotFound(f"no SAE directory {path} on the worker", field="spec.sae.path")
    sae = SparseAutoencoder.load(path)
    return SaeContext(
        sae,
        path.name,
        spec.model,
        spec.hook,
        getattr(spec, "corpus", None),
        getattr(spec, "context_len", None) or 128,
        None,
        {"source": "path", "path": str(path), "architecture": sae.architecture, "d_sae": sae.d_sae},
    )


def sink_reference(spec, sink_info: dict | None) -> SinkReference | None:
    """The sink rule to apply, or None when the spec turns it off."""
    if not spec.sinks.exclude:
        return None
    if sink_info is None:
        raise InvalidSpec(
            "an imported SAE has no harvest to take the sink rule's median norm "
            "from; set sinks.exclude=false or use a trained SAE",
            field="spec.sinks",
        )
    return SinkReference(sink_info["median_norm"], spec.sinks.norm_factor or sink_info["norm_factor"])


def held_out_corpus(harvest_corpus: dict) -> CorpusSpec:
    """The documents after those the harvest used, in the same corpus and order."""
    used = harvest_corpus.get("n_docs_used", 0)
    spec = {k: v for k, v in harvest_corpus.items() if k != "n_docs_used"}
    # +1: the harvest's last document may have been cut by its token budget, not read whole.
    spec.update(first_doc=spec.get("first_doc", 0) + used + 1, max_docs=None)
    return TypeAdapter(CorpusSpec).validate_python(spec)


def chat_endpoint(e: EndpointLLM, store, field: str, llm_endpoints: Mapping[str, LlmEndpoint]) -> ChatEndpoint:
    """The chat endpoint `e` names, resolved with this worker's own `llm_endpoints` setting."""
    where = resolve_endpoint(e, llm_endpoints, field)
    key = None
    if where.api_key_env:
        key = os.environ.get(where.api_key_env)
        if not key:
            raise InvalidSpec(
                f"the worker has no environment variable {where.api_key_env}, which "
                f"SAEQ_LLM_ENDPOINTS names as the key of endpoint {e.endpoint!r} (mount the "
                "saeq-llm-keys Secret into the worker)",
                field=f"{field}.endpoint",
            )
    return ChatEndpoint(
        where.base_url,
        e.model,
        api_key=key,
        timeout_s=e.timeout_s,
        max_retries=e.max_retries,
        token_budget=e.token_budget,
        cache=StoreResponseCache(store),
        max_concurrency=e.max_concurrency,
    )


class StoreResponseCache:
    """Chat request -> response, in the object store under `keys.llm_cache`, shared by every job
    (saeq.ml.llm.ResponseCache)."""

    def __init__(self, store: ObjectStore):
        self.store = store

    @staticmethod
    def key(request: dict) -> str:
        return keys.llm_cache(request_digest(request))

    def get(self, request: dict) -> dict | None:
        try:
            return json.loads(self.store.get(self.key(request)))
        except MissingObject:
            return None

    def put(self, request: dict, response: dict) -> None:
        try:
            self.store.put(self.key(request), json.dumps(response).encode(), content_type="application/json")
        except AlreadyExists:  # another worker asked the same question at the same time
            pass
