"""The browser pages in headless Chromium against a real API on loopback: a login link signs in
only on the user's click (never by itself, not even chained after `#/logout` by an opener), and
the pages (the feature browser, /docs) run under the API's Content-Security-Policy without a
violation."""

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
    server = uvicorn.Server(uvicorn.Config(create_app(api_settings), host="127.0.0.1", port=port, log_level="warning"))
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
    r = httpx.post(
        f"{url}/v1/admin/keys",
        json={"team": team, "name": "browser test"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _page(browser_or_context):
    page = browser_or_context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    return page, problems


def _stored(page):
    return page.evaluate("localStorage.getItem('saeq-api-key')")


def _sign_in_with_form(page, url: str, key: str) -> None:
    page.goto(f"{url}/browse#/jobs")
    page.locator("[name=api_key]").fill(key)
    page.locator("#signin button").click()
    page.wait_for_selector("h1:text('Jobs')")


def test_login_link_with_no_stored_key_signs_in_only_on_the_click(served, chromium):
    url, admin_key = served
    mine = _member_key(url, admin_key, "victims")
    page, problems = _page(chromium)

    page.goto(f"{url}/browse#/login?key={mine}&next=/jobs")  # nothing stored yet: the link only asks
    page.locator("h1").wait_for()
    assert _stored(page) is None
    page.locator("#use-link-key", has_text="Sign in as team “victims”").wait_for()
    page.wait_for_timeout(1500)  # long past the button's arming delay: still nothing stored
    assert _stored(page) is None and "key=" not in page.url
    page.click("#keep-key")  # Cancel: the next page asks for a key
    page.wait_for_selector("#signin")
    assert _stored(page) is None

    page.goto(f"{url}/browse#/login?key={mine}&next=/jobs")
    page.click("#use-link-key")  # the user's click signs in
    page.wait_for_selector("h1:text('Jobs')")
    assert _stored(page) == mine

    page.goto(f"{url}/browse#/login?key=saeq_0123456789abcdef_notakey&next=/jobs")  # a key the API refuses
    page.get_by_text("not accepted here").wait_for()
    assert page.locator("#use-link-key").count() == 0 and _stored(page) == mine
    assert problems == []


def test_login_link_does_not_silently_replace_a_stored_key(served, chromium):
    url, admin_key = served
    mine, theirs = _member_key(url, admin_key, "victims"), _member_key(url, admin_key, "senders")
    page, problems = _page(chromium)
    _sign_in_with_form(page, url, mine)

    page.goto(f"{url}/browse#/login?key={theirs}&next=/jobs")  # someone else's link
    page.locator("#switch-key #use-link-key", has_text="Sign in as team “senders”").wait_for()
    assert _stored(page) == mine and "key=" not in page.url
    page.get_by_text("replace the key stored here (team “victims”").wait_for()
    page.click("#keep-key")
    page.wait_for_selector("h1:text('Jobs')")
    assert _stored(page) == mine

    page.goto(f"{url}/browse#/login?key={theirs}&next=/jobs")
    page.click("#use-link-key")  # the user chose to switch
    page.wait_for_selector("h1:text('Jobs')")
    assert _stored(page) == theirs
    assert problems == []


def test_an_opener_chaining_logout_and_login_changes_no_key_without_clicks(served, chromium):
    """The probe's login CSRF: a page on another origin opens /browse#/logout, then sets the popup's
    fragment to #/login?key=<its own key>. Neither step may change the stored key by itself."""
    url, admin_key = served
    mine, theirs = _member_key(url, admin_key, "victims"), _member_key(url, admin_key, "senders")
    context = chromium.new_context()  # one browser profile: the victim's tab, the attacker's, its popup
    victim, problems = _page(context)
    _sign_in_with_form(victim, url, mine)
    attacker = context.new_page()
    attacker.route("http://attacker.test/**", lambda r: r.fulfill(content_type="text/html", body="<p>cats</p>"))
    attacker.goto("http://attacker.test/")

    with context.expect_page() as opened:
        attacker.evaluate("u => { window.w = window.open(u); }", f"{url}/browse#/logout")
    popup = opened.value
    popup.on("pageerror", lambda e: problems.append(str(e)))
    popup.locator("h1").wait_for()
    assert _stored(popup) == mine  # #/logout only asks:
    popup.wait_for_selector("#sign-out")

    attacker.evaluate("u => { window.w.location = u; }", f"{url}/browse#/login?key={theirs}&next=/jobs")
    popup.locator("h1", has_text="Sign in from a link?").wait_for()
    assert _stored(popup) == mine
    popup.locator("#use-link-key", has_text="Sign in as team “senders”").wait_for()
    popup.wait_for_timeout(1500)
    assert _stored(popup) == mine and _stored(victim) == mine

    popup.click("#keep-key")
    popup.wait_for_selector("h1:text('Jobs')")
    popup.goto(f"{url}/browse#/logout")
    popup.click("#sign-out")  # signing out is a click
    popup.wait_for_selector("#signin")
    assert _stored(popup) is None and popup.url.endswith("/browse#/")
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
