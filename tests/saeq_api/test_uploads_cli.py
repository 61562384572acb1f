"""`saeq uploads add/list/delete` against a real API on loopback."""

from __future__ import annotations

import re

from click.testing import CliRunner

from saeq.client.cli import main
from tests.saeq_api.test_browser_login import _member_key, served  # noqa: F401  (a fixture)


def test_uploads_add_list_delete(served, tmp_path):  # noqa: F811
    url, admin_key = served
    key = _member_key(url, admin_key, "cli-team")
    corpus = tmp_path / "notes.txt"
    corpus.write_text("First doc.\n\nSecond doc.\n")
    run = lambda *args: CliRunner().invoke(main, ["--url", url, "--api-key", key, "uploads", *args])

    added = run("add", str(corpus))
    assert added.exit_code == 0, added.output
    upload_id = added.output.split()[0]
    assert "2 documents" in added.output

    listed = run("list")
    assert listed.exit_code == 0 and upload_id in listed.output
    assert re.search(rf"^{corpus.stat().st_size} of [\d,]+ bytes used$", listed.output, re.M)

    assert run("delete", upload_id).exit_code == 0
    assert re.search(r"^0 of [\d,]+ bytes used$", run("list").output, re.M)
    again = run("delete", upload_id)
    assert again.exit_code != 0 and "no upload" in again.output
