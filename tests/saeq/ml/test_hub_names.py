"""Hub names never reach the filesystem: a hub id is resolved through the hub's cache only, a local
path must be absolute, normalised and under the roots, a file name is a file name (issue 15)."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import ValidationError

from saeq.errors import InvalidSpec, NotFound
from saeq.ml.corpus import iter_documents
from saeq.ml.models import load_model
from saeq.platform.admission import check_local_paths
from saeq.specs import EvaluateSpec, HubCorpus, ImportedSae, ModelSpec, SteerRequest, TrainedSae
from tests.tiny_model import save_tiny_llama

MARKER = "PRIVATE-MARKER-7f3a the text no job may read"

# Relative names that a loader would look up in its working directory, or that are no hub id.
RELATIVE = [
    "../secretdir",
    "a/../b",
    "./secretdir",
    ".secretdir",
    "secretdir/",
    "a/b/c",
    "..",
    ".",
    "a\\b",
    "a\x00b",
    "secretdir\n",
    "~/x",
    "~root",
    " secretdir",
    "a//b",
    "hf://datasets/x",
    "file:///etc/passwd",
    "C:\\x",
    "a/.git",
    "-x",
    "x.",
    "a--b",
]
# Absolute paths that are not what they look like.
ABSOLUTE = ["/models/../etc", "/models/./x", "//etc", "/models/", "/a\x00b", "/a\nb", "/..", "/models/x/.."]
# File names that are no plain file name.
GGUF = [
    "../../../etc/passwd",
    "../../../../etc/passwd.gguf",
    "/etc/passwd.gguf",
    "sub/x.gguf",
    "..\\x.gguf",
    "x.gguf\x00",
    "x\x00.gguf",
    ".x.gguf",
    "..gguf",
    "passwd",
    "x.gguf/",
    "*.gguf",
    "x?.gguf",
    "[a-z]*.gguf",
    "x].gguf",
]  # globs: snapshot_download takes it as a pattern
REVISIONS = ["../../../../etc/passwd", "main/../../x", "/abs", "a\x00", "refs//x", "..", "main\n", ".hidden"]


def _loc(call) -> tuple:
    with pytest.raises(ValidationError) as e:
        call()
    return e.value.errors()[0]["loc"]


@pytest.mark.parametrize("name", RELATIVE + ABSOLUTE)
def test_model_names_that_are_neither_hub_ids_nor_clean_paths_are_refused(name):
    assert _loc(lambda: ModelSpec(name=name)) == ("name",)


@pytest.mark.parametrize("name", RELATIVE)
def test_dataset_names_are_hub_ids_only(name):
    assert _loc(lambda: HubCorpus(source="hf", dataset=name)) == ("dataset",)
    assert _loc(lambda: HubCorpus(source="hf", dataset=f"/{name}")) == ("dataset",)


@pytest.mark.parametrize("gguf", GGUF)
def test_gguf_file_is_a_plain_file_name(gguf):
    for model in ("secretdir", "/models/llama"):
        assert _loc(lambda model=model: ModelSpec(name=model, gguf_file=gguf)) == ("gguf_file",)


@pytest.mark.parametrize("revision", REVISIONS)
def test_revisions_name_no_file(revision):
    assert _loc(lambda: ModelSpec(name="me/model", revision=revision)) == ("revision",)
    assert _loc(lambda: HubCorpus(source="hf", dataset="me/data", revision=revision)) == ("revision",)


@pytest.mark.parametrize("path", [*ABSOLUTE, *RELATIVE])
def test_sae_paths_are_absolute_and_clean(path):
    assert _loc(lambda: ImportedSae(source="path", path=path)) == ("path",)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "..", "a\\b", "a\x00b", "/abs", "x\n", "~x"])
def test_trained_sae_names_are_names(name):
    assert _loc(lambda: TrainedSae(job_id="0" * 32, name=name)) == ("name",)


def test_clean_names_still_pass():
    assert ModelSpec(name="HuggingFaceTB/SmolLM2-135M", revision="refs/pr/1").source == "hub"
    assert ModelSpec(name="gpt2", gguf_file="model.Q4_K.gguf").source == "hub"
    assert ModelSpec(name="/models/llama-3", gguf_file="w.gguf").source == "path"
    assert ModelSpec().source == "builtin"
    assert HubCorpus(source="hf", dataset="wikitext", revision="0123abcd").dataset == "wikitext"
    assert ImportedSae(source="path", path="/saes/gemma-scope/layer_12").path == "/saes/gemma-scope/layer_12"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), n_layers=2, d_model=32)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache, offline: what the stack's workers have."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


@pytest.fixture
def cwd_with_secrets(tmp_path, tiny_dir, monkeypatch):
    """A working directory holding, under hub-id-shaped names, a loadable model (with a GGUF-named
    file) and data files carrying MARKER."""
    cwd = tmp_path / "cwd"
    for name in ("secretdir", "me/tiny"):
        shutil.copytree(tiny_dir, cwd / name)
        (cwd / name / "x.gguf").write_text(MARKER)
        (cwd / name / "secret.txt").write_text(MARKER + "\n")
    (cwd / "top.txt").write_text(MARKER + "\n")
    (cwd / "top.json").write_text(json.dumps({"text": MARKER}) + "\n")
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(name="secretdir"),
        ModelSpec(name="me/tiny"),
        ModelSpec(name="secretdir", gguf_file="x.gguf"),
        ModelSpec(name="me/tiny", revision="main"),
    ],
)
def test_hub_ids_never_load_a_model_or_tokenizer_from_the_working_directory(
    spec, cwd_with_secrets, offline_hub, tmp_path
):
    with pytest.raises(NotFound) as e:
        load_model(spec, cache_dir=str(tmp_path / "cache"))
    assert e.value.field == "spec.model.name" and MARKER not in e.value.message
    # The answer is the same whether or not the working directory holds that name: no oracle.
    shutil.rmtree(cwd_with_secrets)
    cwd_with_secrets.mkdir()
    with pytest.raises(NotFound) as again:
        load_model(spec, cache_dir=str(tmp_path / "cache"))
    assert again.value.message == e.value.message


def _fake_hub_cache(cache, repo_id: str, model_dir, commit: str = "c0ffee" * 6 + "abcd"):
    """The layout huggingface_hub writes: refs/main names the commit, snapshots/<commit> holds the files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    return commit


def test_a_hub_id_loads_from_the_hub_cache_not_from_a_same_named_directory(cwd_with_secrets, offline_hub, tmp_path):
    cached = save_tiny_llama(tmp_path / "cached", n_layers=3, d_model=64)  # differs from the cwd's 2 x 32
    commit = _fake_hub_cache(offline_hub, "me/tiny", cached)
    lm = load_model(ModelSpec(name="me/tiny"), cache_dir=str(tmp_path / "cache"))
    assert (lm.n_layers, lm.d_model) == (3, 64) and lm.provenance["commit"] == commit
    assert lm.tokenizer("a b")["input_ids"]
    with pytest.raises(NotFound) as e:  # a GGUF file the snapshot lacks is not taken from the cwd's me/tiny
        load_model(ModelSpec(name="me/tiny", gguf_file="x.gguf"), cache_dir=str(tmp_path / "cache"))
    assert MARKER not in e.value.message


@pytest.mark.parametrize("dataset", ["secretdir", "me/tiny"])
def test_hub_datasets_never_read_the_working_directory(dataset, cwd_with_secrets, offline_hub, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(NotFound) as e:
        list(iter_documents(HubCorpus(source="hf", dataset=dataset), seed=0))
    assert e.value.field == "spec.corpus.dataset"
    assert MARKER not in e.value.message and str(cwd_with_secrets) not in e.value.message


@pytest.mark.parametrize("builder", ["text", "json", "csv", "parquet", "imagefolder", "Text"])
def test_the_datasets_librarys_local_file_builders_are_no_hub_datasets(builder, cwd_with_secrets):
    with pytest.raises(InvalidSpec) as e:
        list(iter_documents(HubCorpus(source="hf", dataset=builder), seed=0))
    assert e.value.field == "spec.corpus.dataset" and MARKER not in e.value.message


def test_links_out_of_the_roots_are_refused_wherever_they_are(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "llama").mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd.gguf").write_text(MARKER)
    (root / "escape").symlink_to(outside)
    (root / "gguf").mkdir()
    (root / "gguf" / "w.gguf").symlink_to(outside / "passwd.gguf")
    (root / "leaky").mkdir()
    (root / "leaky" / "config.json").symlink_to(outside / "passwd.gguf")  # a file the loader reads
    roots = [str(root)]

    def refused(spec) -> str:
        with pytest.raises(InvalidSpec) as e:
            check_local_paths(spec, roots)
        assert MARKER not in e.value.message
        return e.value.field

    base = dict(hook="blocks.0.hook_resid_post", corpus={"source": "builtin"})
    assert (
        refused(
            EvaluateSpec(
                sae={"source": "path", "path": str(root / "escape")}, model={"name": str(root / "llama")}, **base
            )
        )
        == "spec.sae.path"
    )
    assert (
        refused(
            EvaluateSpec(
                sae={"source": "path", "path": str(root / "llama")}, model={"name": str(root / "escape")}, **base
            )
        )
        == "spec.model.name"
    )
    assert (
        refused(
            EvaluateSpec(
                sae={"source": "path", "path": str(root / "llama")},
                model={"name": str(root / "gguf"), "gguf_file": "w.gguf"},
                **base,
            )
        )
        == "spec.model.gguf_file"
    )
    assert (
        refused(
            EvaluateSpec(
                sae={"source": "path", "path": str(root / "leaky")}, model={"name": str(root / "llama")}, **base
            )
        )
        == "spec.sae.path"
    )
    assert (
        refused(
            SteerRequest(
                sae={"source": "path", "path": str(root / "llama")},
                hook="blocks.0.hook_resid_post",
                model={"name": str(root / "leaky")},
                prompt="hi",
            )
        )
        == "spec.model.name"
    )
    # Hub ids are never paths, whatever exists under that name.
    check_local_paths(
        EvaluateSpec(sae={"source": "path", "path": str(root / "llama")}, model={"name": "escape"}, **base), roots
    )


def test_an_sae_is_never_loaded_from_a_relative_name(tmp_path, monkeypatch):
    from saeq.ml.sae import SparseAutoencoder

    SparseAutoencoder(8, 16, k=4).save(tmp_path / "secretdir")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="absolute directory"):
        SparseAutoencoder.load("secretdir")
    assert SparseAutoencoder.load(tmp_path / "secretdir").d_sae == 16


def test_refusals_outside_the_roots_do_not_say_what_exists_there(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "outside"
    root.mkdir()
    (outside / "real-target").mkdir(parents=True)
    (outside / "link").symlink_to(outside / "real-target")
    messages = []
    for name in ("link", "missing"):
        with pytest.raises(InvalidSpec) as e:
            check_local_paths(ModelSpec(name=str(outside / name)), [str(root)])
        messages.append(e.value.message.replace(name, "NAME"))
    assert messages[0] == messages[1] and "real-target" not in messages[0]


# --- a hub repository's own files (round 2) ----------------------------------------------------

DATASET_COMMIT = "0123456789abcdef" * 2 + "01234567"


@pytest.fixture
def hub_dataset(tmp_path, monkeypatch):
    """Stands in for the hub serving the dataset repository `attacker/ds`: `write(name, text)` puts a
    file in it; huggingface_hub downloads it from there (a snapshot directory named by the commit),
    a file the repository lacks is EntryNotFoundError, as the hub answers."""
    import datasets.load
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    snapshot = tmp_path / "hub" / DATASET_COMMIT
    snapshot.mkdir(parents=True)

    def download(self, repo_id, filename, **kw):
        if repo_id == "attacker/ds" and (snapshot / filename).is_file():
            return str(snapshot / filename)
        raise EntryNotFoundError(f"{filename} not in {repo_id}")

    def not_in_repo(*a, **kw):
        raise FileNotFoundError("not in the repository")

    monkeypatch.setattr(HfApi, "hf_hub_download", download)
    monkeypatch.setattr(datasets.load, "cached_path", not_in_repo)  # .huggingface.yaml, dataset_infos.json

    def write(name: str, text: str) -> None:
        (snapshot / name).write_text(text)

    return write


def _card(data_files: str, key: str = "data_files") -> str:
    if key == "data_dir":
        return f"---\nconfigs:\n- config_name: default\n  data_dir: {json.dumps(data_files)}\n---\n"
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        f"    path: {json.dumps(data_files)}\n---\n"
    )


def _card_refused(corpus=HubCorpus(source="hf", dataset="attacker/ds"), *hidden: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        list(iter_documents(corpus, seed=0))
    assert e.value.field == "spec.corpus.dataset" and "outside the repository" in e.value.message
    for text in (MARKER, *hidden):
        assert text not in e.value.message


def test_a_dataset_card_cannot_make_the_worker_read_its_files(hub_dataset, tmp_path):
    private = tmp_path / "another-team"
    private.mkdir()
    (private / "data.jsonl").write_text(json.dumps({"text": MARKER}) + "\n")
    hub_dataset("README.md", _card(f"{private}/*.jsonl"))
    _card_refused(HubCorpus(source="hf", dataset="attacker/ds"), str(private))


def test_a_dataset_card_cannot_make_the_worker_fetch_a_url(hub_dataset):
    import http.server
    import threading

    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps({"text": MARKER}).encode() + b"\n")

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/internal/meta.jsonl"
        hub_dataset("README.md", _card(url))
        _card_refused(HubCorpus(source="hf", dataset="attacker/ds"), url)
    finally:
        server.shutdown()
    assert requests == []  # refused before anything was fetched


@pytest.mark.parametrize(
    "pattern, key",
    [
        ("hf://datasets/other-team/private/*.jsonl", "data_files"),
        ("file:///etc/passwd", "data_files"),
        ("../../other-team/private/*.jsonl", "data_files"),
        ("data/../../x/*.jsonl", "data_files"),
        ("~/x/*.jsonl", "data_files"),
        ("zip://*.jsonl::/tmp/x.zip", "data_files"),
        ("C:\\x\\*.jsonl", "data_files"),
        ("/tmp", "data_dir"),
        ("../other", "data_dir"),
        ("s3://bucket/x", "data_dir"),
    ],
)
def test_every_card_pattern_that_leaves_the_repository_is_refused(hub_dataset, pattern, key):
    hub_dataset("README.md", _card(pattern, key))
    _card_refused(HubCorpus(source="hf", dataset="attacker/ds"), pattern)


def test_the_standalone_yaml_is_checked_too(hub_dataset, tmp_path):
    hub_dataset("README.md", "---\nlicense: mit\n---\n")
    hub_dataset(".huggingface.yaml", f"configs:\n- config_name: default\n  data_files: {tmp_path}/*.jsonl\n")
    _card_refused(HubCorpus(source="hf", dataset="attacker/ds", config="default"), str(tmp_path))


def test_cards_choosing_the_repositorys_own_files_pass_at_a_pinned_commit(hub_dataset):
    from saeq.ml.corpus import checked_dataset_commit

    hub_dataset(
        "README.md",
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        '    path: ["data/train-*.jsonl", "**/*.parquet"]\n  - split: test\n'
        "    path: data/test.jsonl\n- config_name: fr\n  data_dir: fr\n---\n",
    )
    assert checked_dataset_commit(HubCorpus(source="hf", dataset="attacker/ds")) == DATASET_COMMIT


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory, tiny_dir):
    """The tiny model saved in shards (a model.safetensors.index.json and its weight_map), as big
    hub models are."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_dir).save_pretrained(out, max_shard_size="40KB")
    for f in tiny_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out)
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    return out


def _edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _secret_tokenizer(at) -> None:
    """A tokenizer whose vocabulary holds MARKER's word, as another team's file outside the repository."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "SECRET_WORD_OF_TEAM_B": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(at)
    (at / "tokenizer.json").rename(at / "tokenizer.1.json")


def _model_refused(spec, cache_dir, *hidden: str) -> str:
    with pytest.raises(InvalidSpec) as e:
        load_model(spec, cache_dir=str(cache_dir))
    assert e.value.field == "spec.model.name" and "no plain file name" in e.value.message
    for text in (MARKER, "SECRET_WORD", *hidden):
        assert text not in e.value.message
    return e.value.message


UP = "../" * 16


def test_a_hub_tokenizer_config_cannot_load_a_tokenizer_from_outside_its_snapshot(sharded_dir, offline_hub, tmp_path):
    outside = tmp_path / "team-b" / "tok"
    _secret_tokenizer(outside)
    repo = tmp_path / "repo"
    shutil.copytree(sharded_dir, repo)
    _edit_json(repo / "tokenizer_config.json", fast_tokenizer_files=[UP + str(outside / "tokenizer.1.json")[1:]])
    _fake_hub_cache(offline_hub, "attacker/model", repo)
    _model_refused(ModelSpec(name="attacker/model"), tmp_path / "cache", str(outside))


def test_a_hub_repositorys_file_names_are_no_existence_oracle(sharded_dir, offline_hub, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(sharded_dir, repo)
    (repo / "tokenizer.1.json").mkdir()  # a directory the names below climb out of
    (repo / "tokenizer.1.json" / "x.json").write_text("{}")
    commit = _fake_hub_cache(offline_hub, "attacker/model", repo)
    snapshot = offline_hub / "models--attacker--model" / "snapshots" / commit
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    messages = {}
    for target in ("etc/passwd", "etc/no-such-file"):
        _edit_json(snapshot / "tokenizer_config.json", fast_tokenizer_files=["tokenizer.1.json/" + UP + target])
        messages["tokenizer", target] = _model_refused(ModelSpec(name="attacker/model"), tmp_path / "cache")
        _edit_json(snapshot / "tokenizer_config.json", fast_tokenizer_files=[])
        _edit_json(
            snapshot / "model.safetensors.index.json",
            weight_map={k: UP + target if v == first else v for k, v in index["weight_map"].items()},
        )
        messages["weights", target] = _model_refused(ModelSpec(name="attacker/model"), tmp_path / "cache")
        _edit_json(snapshot / "model.safetensors.index.json", weight_map=index["weight_map"])
    assert messages["tokenizer", "etc/passwd"] == messages["tokenizer", "etc/no-such-file"]
    assert messages["weights", "etc/passwd"] == messages["weights", "etc/no-such-file"]


@pytest.mark.parametrize("absolute", [True, False])
def test_a_weight_map_cannot_load_weights_from_outside_the_model(sharded_dir, offline_hub, tmp_path, absolute):
    """Another team's shard, named by an absolute path or by ../ from the snapshot, is never read;
    the same for a local model directory (the roots' check sees only the directory, not its JSON)."""
    repo = tmp_path / "repo"
    shutil.copytree(sharded_dir, repo)
    index = json.loads((repo / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "team-b").mkdir()
    stolen = tmp_path / "team-b" / first
    shutil.move(repo / first, stolen)  # the snapshot lacks it: only the outside copy could load
    commit = "c0ffee" * 6 + "abcd"
    snapshot = offline_hub / "models--attacker--model" / "snapshots" / commit
    name = str(stolen) if absolute else UP + str(stolen)[1:]
    _edit_json(
        repo / "model.safetensors.index.json",
        weight_map={k: name if v == first else v for k, v in index["weight_map"].items()},
    )
    _fake_hub_cache(offline_hub, "attacker/model", repo, commit)
    _model_refused(ModelSpec(name="attacker/model"), tmp_path / "cache", str(stolen), str(snapshot))
    _model_refused(ModelSpec(name=str(repo)), tmp_path / "cache", str(stolen))


def test_a_local_model_directory_is_held_to_the_same_rule(tiny_dir, tmp_path):
    outside = tmp_path / "team-b" / "tok"
    _secret_tokenizer(outside)
    local = tmp_path / "models" / "llama"
    shutil.copytree(tiny_dir, local)
    _edit_json(local / "tokenizer_config.json", fast_tokenizer_files=["../../team-b/tok/tokenizer.1.json"])
    _model_refused(ModelSpec(name=str(local)), tmp_path / "cache", str(outside))
    _edit_json(local / "tokenizer_config.json", fast_tokenizer_files=[], vocab_file="/etc/passwd")
    _model_refused(ModelSpec(name=str(local)), tmp_path / "cache")


def test_a_sharded_hub_model_with_its_own_file_names_still_loads(sharded_dir, offline_hub, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(sharded_dir, repo)
    # An author's absolute path in a key transformers never opens (as Pythia's repositories have).
    _edit_json(
        repo / "tokenizer_config.json",
        special_tokens_map_file="/admin/home/.cache/special_tokens_map.json",
        fast_tokenizer_files=["tokenizer.json"],
    )
    _fake_hub_cache(offline_hub, "me/sharded", repo)
    lm = load_model(ModelSpec(name="me/sharded"), cache_dir=str(tmp_path / "cache"))
    assert (lm.n_layers, lm.d_model) == (2, 32) and lm.tokenizer("a b")["input_ids"]


def test_load_errors_name_no_path_on_the_worker(tmp_path):
    from saeq.ml.models import _detail

    source = tmp_path / "snapshots" / "abc"
    e = OSError(
        f"Can't load {source}/config.json: it links to {tmp_path}/blobs/9f8e7d and '/etc/passwd' exists; "
        "see https://huggingface.co/docs for attacker/model </s>"
    )
    shown = _detail(e, source)
    assert str(tmp_path) not in shown and "/etc/passwd" not in shown and "/blobs/" not in shown
    assert "https://huggingface.co/docs" in shown and "attacker/model" in shown and "</s>" in shown


@pytest.mark.parametrize("base", ["/models/team-b/llama", "../team-b/llama", "./x", "a/b/c"])
def test_an_adapter_config_cannot_name_a_base_model_directory(tiny_dir, tmp_path, base):
    """transformers with peft installed loads the base model an adapter_config.json names instead."""
    local = tmp_path / "models" / "llama"
    shutil.copytree(tiny_dir, local)
    (local / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    with pytest.raises(InvalidSpec) as e:
        load_model(ModelSpec(name=str(local)), cache_dir=str(tmp_path / "cache"))
    assert e.value.field == "spec.model.name" and "base_model_name_or_path" in e.value.message
    assert base not in e.value.message
    (local / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M"}))
    assert load_model(ModelSpec(name=str(local)), cache_dir=str(tmp_path / "cache")).n_layers == 2
