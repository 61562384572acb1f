"""The browser pages in headless Chromium against a real API on loopback: a login link never
silently replaces a stored key, and the pages (the feature browser, /docs) run under the API's
Content-Security-Policy without a violation."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn
from saeq_api.main import create_app

from tests.servers import free_port


@pytest.fixture
def served(api_settings):
    """The API served by uvicorn in a thread; yields (base URL, admin key)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(api_settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.1)
    yield url, api_settings.bootstrap_admin_key.get_secret_value()
    server.should_exit = True
    thread.join(timeout=10)


def _member_key(url: str, admin_key: str, team: str) -> str:
    r = httpx.post(f"{url}/v1/admin/keys", json={"team": team, "name": "browser test"},
                   headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _page(chromium):
    page = chromium.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    return page, problems


def test_login_link_does_not_silently_replace_a_stored_key(served, chromium):
    url, admin_key = served
    mine, theirs = _member_key(url, admin_key, "victims"), _member_key(url, admin_key, "senders")
    page, problems = _page(chromium)
    stored = lambda: page.evaluate("localStorage.getItem('saeq-api-key')")  # noqa: E731

    page.goto(f"{url}/browse#/login?key={mine}&next=/jobs")  # nothing stored yet: signs in
    page.wait_for_selector("h1:text('Jobs')")
    assert stored() == mine and "key=" not in page.url

    page.goto(f"{url}/browse#/login?key={theirs}&next=/jobs")  # someone else's link
    page.wait_for_selector("#switch-key")
    assert stored() == mine and "key=" not in page.url
    page.wait_for_selector("text=team “senders”")
    page.click("#keep-key")
    page.wait_for_selector("h1:text('Jobs')")
    assert stored() == mine

    page.goto(f"{url}/browse#/login?key={theirs}&next=/jobs")
    page.click("#use-link-key")  # the user chose to switch
    page.wait_for_selector("h1:text('Jobs')")
    assert stored() == theirs
    assert problems == []


def test_pages_run_under_the_content_security_policy(served, chromium):
    url, _ = served
    page, problems = _page(chromium)
    page.goto(f"{url}/docs")
    page.wait_for_selector(".swagger-ui .information-container h2", timeout=30_000)  # rendered from /openapi.json
    assert "saeq" in page.locator(".swagger-ui .information-container h2").inner_text()
    page.goto(f"{url}/browse#/")
    page.wait_for_selector("#signin")
    assert problems == []
