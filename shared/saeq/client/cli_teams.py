"""`saeq whoami`, `saeq keys ...` and `saeq teams ...`: API keys and quotas (keys and teams need an
admin key)."""

from __future__ import annotations

import json

import click


def _call(ctx: click.Context, method: str, *args, **kw):
    """`Client.<method>(...)`; its errors become one line in saeq.client.cli_errors.SaeqGroup."""
    from saeq.client.cli import _client

    return getattr(_client(ctx), method)(*args, **kw)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")(f)


@click.command()
@_json_option
@click.pass_context
def whoami(ctx, as_json: bool) -> None:
    """Your team, role, quota, the team's use of it, and its GPU usage against its fair share."""
    me = _call(ctx, "me")
    if as_json:
        return click.echo(json.dumps(me, indent=2))
    click.echo(f"team {me['team']}  role {me['role']}  key {me['key_id'] or '-'}")
    click.echo(f"jobs: {me['active']} dispatched, {me['waiting']} waiting")
    click.echo("quota: " + "  ".join(f"{k}={_quota_value(v)}" for k, v in me["quota"].items()))
    share = me["share"]
    click.echo(
        f"usage: {share['usage_s']:,.0f} device-seconds (decayed)  weight {share['weight']:g}  "
        f"share {share['share']:.1%} of all teams' use  target {share['target']:.1%}"
        + ("" if share.get("active", True) else " (no job open)")
    )


def _quota_value(v) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else f"{v:,}"


@click.group()
def keys() -> None:
    """API keys: each belongs to a team; admins see and manage every team."""


@keys.command("new")
def keys_new() -> None:
    """Print a fresh key without storing it anywhere (for SAEQ_BOOTSTRAP_ADMIN_KEY)."""
    from saeq.specs.api_keys import new_key

    click.echo(new_key()[1])


@keys.command("create")
@click.argument("team")
@click.option("--admin", is_flag=True, help="An admin key (every team) instead of a member's.")
@click.option("--name", default="", help="Whose key it is, for listings.")
@click.pass_context
def keys_create(ctx, team, admin, name) -> None:
    """Create a key for TEAM and print it: it is shown this once (saeq stores only its hash)."""
    k = _call(ctx, "create_key", team, role="admin" if admin else "member", name=name)
    click.echo(f"key {k['key_id']} for team {k['team']} ({k['role']}):", err=True)
    click.echo(k["key"])


@keys.command("list")
@click.option("--team", default=None)
@_json_option
@click.pass_context
def keys_list(ctx, team, as_json: bool) -> None:
    """Key ids, teams and roles (never the keys themselves)."""
    records = _call(ctx, "keys", team)
    if as_json:
        return click.echo(json.dumps(records, indent=2))
    for k in records:
        state = "revoked" if k["revoked_at"] else "active"
        click.echo(f"{k['key_id']}  {k['team']:<20} {k['role']:<7} {state:<8} {k['name']}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx, key_id) -> None:
    """Revoke a key at once; its team's jobs are untouched."""
    _call(ctx, "revoke_key", key_id)
    click.echo(f"revoked {key_id}")


@click.group()
def teams() -> None:
    """Teams and their quotas (admin)."""


@teams.command("list")
@_json_option
@click.pass_context
def teams_list(ctx, as_json: bool) -> None:
    """Every team with its quota and use."""
    found = _call(ctx, "teams")
    if as_json:
        return click.echo(json.dumps(found, indent=2))
    for t in found:
        q = t["quota"]
        click.echo(
            f"{t['team']:<20} dispatched {t['active']}/{q['max_running']}  waiting {t['waiting']}/"
            f"{q['max_queued']}  max_tokens {q['max_tokens']:,}  max_latents {q['max_latents']:,}  "
            f"max_time_s {q['max_time_s']:g}"
        )


@teams.command("set-quota")
@click.argument("team")
@click.option("--max-running", type=int, default=None)
@click.option("--max-queued", type=int, default=None)
@click.option("--max-tokens", type=int, default=None)
@click.option("--max-latents", type=int, default=None)
@click.option("--max-time-s", type=float, default=None)
@click.option("--max-stored-jobs", type=int, default=None)
@click.option("--submits-per-minute", type=int, default=None)
@click.option("--max-job-cost", type=int, default=None)
@click.option("--max-batch-tokens", type=int, default=None)
@click.option("--max-upload-bytes", type=int, default=None)
@click.option("--max-uploads", type=int, default=None)
@click.option("--live-concurrency", type=int, default=None)
@click.option("--live-per-minute", type=int, default=None)
@click.option("--live-prompt-tokens", type=int, default=None)
@click.pass_context
def teams_set_quota(ctx, team, **given) -> None:
    """Change TEAM's quota; options left out keep their current values."""
    current = next((t["quota"] for t in _call(ctx, "teams") if t["team"] == team), {})
    quota = {**current, **{k: v for k, v in given.items() if v is not None}}
    out = _call(ctx, "set_quota", team, **quota)
    click.echo(json.dumps(out["quota"]))
