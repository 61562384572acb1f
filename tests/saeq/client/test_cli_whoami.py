"""`saeq whoami` prints the team's GPU usage against its fair share, as `GET /v1/me` answers it
(the route itself runs on a real stack in tests/saeq_api/test_team_share.py)."""

from __future__ import annotations

from click.testing import CliRunner

from saeq.client import cli


class _Me:
    def __init__(self, answer: dict):
        self.answer = answer

    def me(self) -> dict:
        return self.answer


def test_whoami_shows_usage_weight_share_and_target(monkeypatch):
    answer = {
        "team": "vision",
        "role": "member",
        "key_id": "k1",
        "active": 1,
        "waiting": 3,
        "stored": 4,
        "quota": {"max_running": 4, "max_tokens": 500_000_000, "share_weight": 3.0, "preemptible": False},
        "share": {"weight": 3.0, "usage_s": 7_265.4, "share": 0.125, "target": 0.75, "active": True},
    }
    monkeypatch.setattr(cli, "_client", lambda ctx: _Me(answer))
    out = CliRunner().invoke(cli.main, ["whoami"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "team vision  role member  key k1"
    assert "max_tokens=500,000,000" in lines[2] and "preemptible=no" in lines[2]
    assert lines[3] == "usage: 7,265 device-seconds (decayed)  weight 3  share 12.5% of all teams' use  target 75.0%"
    answer["share"].update(active=False, target=0.0)
    out = CliRunner().invoke(cli.main, ["whoami"])
    assert out.output.splitlines()[3].endswith("target 0.0% (no job open)")
