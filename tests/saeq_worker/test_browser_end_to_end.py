"""The feature browser in a real headless Chromium (Debian's, driven by Playwright): a label job of
a trained SAE publishes its pages; the feature page shows the label and the shaded tokens, and the
steering playground runs a request on a live worker."""

from __future__ import annotations

import re

import pytest

from saeq.specs import LabelSpec

pytestmark = pytest.mark.integration


def test_feature_page_list_and_playground(client_module, train_job, chromium, tmp_path):
    client = client_module
    label = client.wait(
        client.submit(
            LabelSpec(
                sae={"job_id": train_job["id"]},
                index_tokens=4096,
                n_most_active=6,
                explainers=[{"backend": "metadata"}],
                judge=None,
                scorers=["embedding"],
                n_explain_examples=4,
                n_score_examples=4,
            )
        )["id"],
        timeout=300,
    )
    manifest = client.manifest(label["id"])
    assert manifest["browser"]["n_chunks"] == 1  # 256 latents
    record = max(client.labels(label["id"]), key=lambda r: r["max_activation"])
    feature = record["feature"]

    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{client.url}/browse#/feature/{label['id']}/{feature}")
    page.wait_for_selector("#signin")  # no key yet: the page asks for one
    page.locator("[name=api_key]").fill(client.api_key)
    page.locator("#signin button").click()
    page.wait_for_selector(".label")
    assert page.locator(".label").first.inner_text() == record["label"]
    shaded = page.locator("#top .tok[data-act]")
    assert shaded.count() > 0
    assert "rgba(249, 115, 22" in shaded.first.get_attribute("style")
    assert page.locator("svg.hist rect").count() > 0
    assert page.locator("#quantiles .window").count() > 0 and "[object" not in page.content()
    controls = page.locator("#judge-controls").inner_text()  # the embedding scorer's controls, with their interval
    assert re.search(r"embedding judge .*: control accuracy [\d.]+ \[[\d.]+, [\d.]+\] \(n=\d+ trials\)", controls)
    assert re.search(
        r"AUC [\d.]+ \[[\d.]+, [\d.]+\] \(n=\d+ windows, 95% intervals over them\)",
        page.locator(".card").first.inner_text(),
    )
    page.screenshot(path=str(tmp_path / "feature.png"), full_page=True)

    page.goto(f"{client.url}/browse#/features/{label['id']}?labelled=1")
    page.wait_for_selector("#features tbody tr")
    assert page.locator("#features tbody tr").count() == 6
    assert page.locator("#total").inner_text() == "6 features"

    page.goto(f"{client.url}/browse#/feature/{label['id']}/{feature}")
    page.get_by_text("steer with it").click()
    page.wait_for_selector("#run")
    assert page.locator("[name=feature]").input_value() == str(feature)
    page.locator("[name=max_new_tokens]").fill("6")
    page.locator("#run").click()
    # A locator, not wait_for_function: that evaluates a string, which the page's CSP forbids.
    page.locator("#figures", has_text=re.compile(r"^KL")).wait_for(timeout=120_000)
    figures = page.locator("#figures").inner_text()  # each with its interval over the generated tokens
    assert re.search(
        r"^KL from default [-\d.]+ \[[-\d.]+, [-\d.]+\] nats/token · perplexity .* [\d.]+ \[[\d.]+, [\d.]+\]", figures
    )
    assert page.locator("#steered").inner_text().strip() and page.locator("#default").inner_text().strip()
    assert page.locator("#error").inner_text() == ""
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert (tmp_path / "playground.png").stat().st_size > 10_000

    page.goto(f"{client.url}/browse#/logout")  # only asks: signing out is the button's click
    page.click("#sign-out")
    page.wait_for_selector("#signin")
    page.goto(f"{client.url}/browse#/login?key={client.api_key}&next=/")  # the demo's link signs in too,
    page.locator("#use-link-key", has_text="Sign in as team").click()  # on the user's click
    page.wait_for_selector("#saes")  # not just any table: the playground's is still there until then
    assert "key=" not in page.url  # and the key leaves the address bar
    assert page.locator("#saes").get_by_text("topk").count() > 0
    # Not evaluated: its FVU and L0 are the train job's held-out figures, each with its interval and n.
    row_ci = page.locator("#saes tbody tr").first.locator(".ci")
    assert all(re.fullmatch(r"\[[\d.]+, [\d.]+\] n=\d+", row_ci.nth(i).inner_text()) for i in range(2)), (
        row_ci.all_inner_texts()
    )
    assert page.locator(f"#saes a[href='#/features/{label['id']}']").count() == 1
    page.goto(f"{client.url}/browse#/jobs")
    page.wait_for_selector(f"tr[data-job='{label['id']}'] .state")
    assert page.locator(f"tr[data-job='{label['id']}'] .state").inner_text() == "succeeded"
    assert errors == []
