"""Documents come out in a fixed, seeded order; uploads that are not text are refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from saeq import keys
from saeq.errors import InvalidSpec, NotFound
from saeq.ml.corpus import Document, builtin_documents, document_info, iter_documents, validate_upload
from saeq.platform.store import LocalStore
from saeq.specs import BuiltinCorpus, HubCorpus, UploadCorpus

UPLOAD_ID = "0123456789abcdef0123456789abcdef"


def ids(corpus, seed=0, store=None) -> list[int]:
    return [d.doc_id for d in iter_documents(corpus, seed=seed, store=store)]


def test_builtin_order_is_a_seeded_permutation():
    everything = ids(BuiltinCorpus(), seed=0)
    assert len(builtin_documents("wiki-en")) == 10_033
    assert sorted(everything) == list(range(10_033))
    assert ids(BuiltinCorpus(max_docs=50), seed=0) == everything[:50]
    assert ids(BuiltinCorpus(max_docs=50), seed=1) != everything[:50]
    titles = [d.title for d in iter_documents(BuiltinCorpus(max_docs=20), seed=0)]
    assert titles != sorted(titles)  # not the file's alphabetical order


def test_builtin_first_doc_and_max_docs():
    everything = ids(BuiltinCorpus(name="wiki-fr"), seed=7)
    window = BuiltinCorpus(name="wiki-fr", first_doc=100, max_docs=30)
    assert ids(window, seed=7) == everything[100:130]
    assert ids(BuiltinCorpus(name="wiki-fr", first_doc=9_950), seed=7) == everything[9_950:]


def test_builtin_documents_carry_title_and_topic():
    doc = next(iter_documents(BuiltinCorpus(name="wiki-es"), seed=0))
    assert doc.title and doc.topic and len(doc.text) > 20
    assert document_info(BuiltinCorpus(name="wiki-es"), [doc.doc_id, -1]) == {doc.doc_id: doc}
    hydrogen = [d for d in builtin_documents("wiki-en") if d.title == "Hydrogen"]
    assert hydrogen[0].topic == "Uncategorized" and hydrogen[0].text.startswith("Hydrogen")


def test_txt_and_jsonl_uploads(tmp_path):
    store = LocalStore(tmp_path)
    store.put(
        keys.upload(UPLOAD_ID, "a.jsonl"), b'{"body": "first", "title": "One"}\n\n{"body": "second", "topic": "T"}\n'
    )
    store.put(keys.upload(UPLOAD_ID, "b.txt"), b"Para one\nstill one.\n\n  \nPara two\r\n\r\nthree")
    docs = list(
        iter_documents(
            UploadCorpus(source="upload", upload_id=UPLOAD_ID, text_field="body", first_doc=1), seed=0, store=store
        )
    )
    assert docs == [
        Document(1, "second", None, "T"),
        Document(2, "Para one\nstill one."),
        Document(3, "Para two"),
        Document(4, "three"),
    ]
    assert validate_upload("b.txt", store.get(keys.upload(UPLOAD_ID, "b.txt")), "text") == 3


@pytest.mark.parametrize(
    "filename, data, message",
    [
        ("x.txt", b"fine\n\nline two\x00\x01\x02", "line 3: binary content"),
        ("x.txt", b"ok\n\xff\xfe caf\xe9", "line 2: not UTF-8"),
        ("x.jsonl", b'{"text": "a"}\n{"text": "b"\n', "line 2: not valid JSON"),
        ("x.jsonl", b'{"text": "a"}\n\n["text"]\n', "line 3: expected a JSON object"),
        ("x.jsonl", b'{"text": "a"}\n{"body": "b"}\n', "line 2: no string field 'text'"),
        ("x.csv", b"a,b\n", "expected a .txt or .jsonl file"),
        ("x.txt", b"\n \n", "no documents"),
    ],
)
def test_validate_upload_says_what_and_where(filename, data, message):
    with pytest.raises(ValueError, match=message):
        validate_upload(filename, data, "text")


def test_bad_upload_fails_the_job_naming_field_and_line(tmp_path):
    store = LocalStore(tmp_path)
    store.put(keys.upload(UPLOAD_ID, "c.jsonl"), b'{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(InvalidSpec, match="line 2") as e:
        list(iter_documents(UploadCorpus(source="upload", upload_id=UPLOAD_ID), seed=0, store=store))
    assert e.value.field == "spec.corpus.text_field"
    with pytest.raises(NotFound) as e:
        list(iter_documents(UploadCorpus(source="upload", upload_id="f" * 32), seed=0, store=store))
    assert e.value.field == "spec.corpus.upload_id"


def test_hub_dataset(monkeypatch, tmp_path):
    import datasets
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    rows = {"content": [f"doc {i}" for i in range(10)], "title": [f"t{i}" for i in range(10)]}
    calls = []
    commit = "ab" * 20
    (tmp_path / commit).mkdir()
    (tmp_path / commit / "README.md").write_text("---\nlicense: mit\n---\n")

    def hub_card(self, repo_id, filename, **kw):  # stands in for the hub serving me/wiki's card
        if repo_id != "me/wiki":
            raise RepositoryNotFoundError(f"no repository {repo_id}")
        if filename != "README.md":
            raise EntryNotFoundError(filename)
        return str(tmp_path / commit / filename)

    monkeypatch.setattr(HfApi, "hf_hub_download", hub_card)

    def fake_load(name, config, *, split, streaming, revision):
        calls.append((name, config, split, streaming, revision))
        if name == "hf://datasets/nobody/nothing":
            raise datasets.exceptions.DatasetNotFoundError("Dataset 'nobody/nothing' doesn't exist")
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = HubCorpus(source="hf", dataset="me/wiki", text_field="content", first_doc=2, max_docs=3, revision="v1")
    docs = list(iter_documents(spec, seed=0))
    assert docs == [Document(i, f"doc {i}", f"t{i}") for i in (2, 3, 4)]
    # The hub's, never a local directory; at the commit whose card was checked.
    assert calls[0] == ("hf://datasets/me/wiki", None, "train", True, commit)
    with pytest.raises(InvalidSpec) as e:
        list(iter_documents(HubCorpus(source="hf", dataset="me/wiki"), seed=0))
    assert e.value.field == "spec.corpus.text_field" and "content" in e.value.message
    with pytest.raises(NotFound) as e:
        list(iter_documents(HubCorpus(source="hf", dataset="nobody/nothing"), seed=0))
    assert e.value.field == "spec.corpus.dataset"


def test_corpus_module_imports_no_torch():
    code = "import sys, saeq.ml.corpus; sys.exit('torch' in sys.modules or 'datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_jsonl_fields_roundtrip():
    data = "\n".join(json.dumps({"text": f"é {i}"}) for i in range(5)).encode()
    assert validate_upload("u.jsonl", data, "text") == 5
