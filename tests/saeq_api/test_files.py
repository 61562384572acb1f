"""`/v1/files`, the local store's signed download links, against an in-process API on a real local
store: links this API issued work; forged, too-long-lived and malformed ones get a 4xx, never a 500;
an API without a secret signing key refuses to start."""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from saeq.platform.settings import InsecureSettings
from saeq.platform.store import sign_local
from saeq_api.main import create_app

KEY = "jobs/0123456789abcdef0123456789abcdef/saes/topk/sae.safetensors"  # another team's SAE
PUBLIC_DEFAULT = b"saeq-dev-signing-key"  # the old built-in key, in every copy of saeq


@pytest.fixture
def local(api_settings, tmp_path):
    """(client without an API key, its LocalStore) of an API whose store is a local directory."""
    settings = api_settings.model_copy(update={"store": f"file://{tmp_path / 'store'}", "link_ttl_s": 600})
    with TestClient(create_app(settings)) as c:  # /v1/files needs no API key
        store = c.app.state.services.store
        store.put(KEY, b"weights")
        yield c, store


def _get(client: TestClient, key: str, expires: int, sig: str):
    return client.get(f"/v1/files/{quote(key)}", params={"expires": expires, "sig": sig})


def test_a_link_the_api_issued_downloads_the_file(local):
    client, store = local
    url = urlsplit(store.download_url(KEY))
    resp = client.get(f"{url.path}?{url.query}")
    assert resp.status_code == 200 and resp.content == b"weights"


def test_forged_and_overlong_links_are_refused(local):
    client, store = local
    in_2100 = 4_102_444_800
    soon = int(time.time()) + 300
    # The attack of the probe: the public default key, a link valid until 2100.
    forged = _get(client, KEY, in_2100, sign_local(PUBLIC_DEFAULT, KEY, in_2100))
    assert forged.status_code == 403
    assert _get(client, KEY, soon, sign_local(PUBLIC_DEFAULT, KEY, soon)).json()["detail"] == "bad download signature"
    # Even signed with the right key, a link may not live longer than the store's link TTL (600 s).
    far = _get(client, KEY, in_2100, sign_local(store.signing_key, KEY, in_2100))
    assert far.status_code == 403 and "600 s" in far.json()["detail"]
    hour = int(time.time()) + 3600
    assert _get(client, KEY, hour, sign_local(store.signing_key, KEY, hour)).status_code == 403
    past = int(time.time()) - 1
    assert _get(client, KEY, past, sign_local(store.signing_key, KEY, past)).json()["detail"] == "download link expired"
    # The store caps what it issues too: asking for a day gets at most the TTL.
    expires = int(dict(p.split("=") for p in urlsplit(store.download_url(KEY, 86_400)).query.split("&"))["expires"])
    assert expires <= time.time() + 600


def _field(resp) -> list[str]:
    return [e["field"] for e in resp.json()["detail"]]


def test_hostile_parameters_get_a_4xx_naming_the_parameter(local):
    client, store = local
    expires = int(time.time()) + 300
    good_sig = sign_local(store.signing_key, KEY, expires)
    for sig in ["é" * 64, "ü", good_sig.upper(), good_sig[:-1], good_sig + "0", "\x00" * 64]:
        resp = _get(client, KEY, expires, sig)
        assert resp.status_code == 422 and _field(resp) == ["query.sig"], (sig, resp.text)
    for expires_param in ["soon", "1e99", "nan"]:
        resp = client.get(f"/v1/files/{KEY}", params={"expires": expires_param, "sig": good_sig})
        assert resp.status_code == 422 and _field(resp) == ["query.expires"], resp.text
    # Keys the file system would choke on, each signed correctly: the check is on the key itself.
    for key in ["a" * 10_000, "jobs/" + "b" * 300 + "/x", "jobs/x\x00y", "jobs/x\ty", "é/" * 600]:
        resp = _get(client, key, expires, sign_local(store.signing_key, key, expires))
        assert resp.status_code == 422 and _field(resp) == ["key"], (key[:20], resp.text)
    # Partial writes are not objects, even with a valid signature.
    tmp_key = ".tmp/.tmp-partial"
    (store.tmp_dir / ".tmp-partial").write_bytes(b"half")
    assert _get(client, tmp_key, expires, sign_local(store.signing_key, tmp_key, expires)).status_code == 404


@pytest.mark.parametrize("key", [None, "", "saeq-dev-signing-key", "change-me-signing-key", "short-key"])
def test_the_api_refuses_to_start_without_a_secret_signing_key(api_settings, key):
    settings = api_settings.model_copy(update={"signing_key": None if key is None else SecretStr(key)})
    with pytest.raises(InsecureSettings, match="SAEQ_SIGNING_KEY") as e, TestClient(create_app(settings)):
        pass
    assert "SAEQ_INSECURE_DEV=1" in str(e.value)


def test_insecure_dev_starts_without_a_key_and_signs_with_a_key_of_its_own(api_settings, tmp_path):
    settings = api_settings.model_copy(
        update={"signing_key": None, "insecure_dev": True, "store": f"file://{tmp_path / 'store'}"}
    )
    with TestClient(create_app(settings)) as client:
        store = client.app.state.services.store
        store.put(KEY, b"weights")
        assert len(store.signing_key) == 32 and store.signing_key != PUBLIC_DEFAULT
        url = urlsplit(store.download_url(KEY))
        assert client.get(f"{url.path}?{url.query}").content == b"weights"
        expires = int(time.time()) + 300
        assert _get(client, KEY, expires, sign_local(PUBLIC_DEFAULT, KEY, expires)).status_code == 403
