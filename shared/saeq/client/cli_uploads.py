"""`saeq uploads ...`: corpus files a team uploaded for harvests, and its storage quota."""

from __future__ import annotations

import json
from pathlib import Path

import click

from saeq.client.cli_teams import _call, _json_option


@click.group()
def uploads() -> None:
    """Corpus uploads (.txt or .jsonl) of your team; they count against its max_upload_bytes."""


@uploads.command("add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text-field", default="text", show_default=True, help="The text field of a .jsonl file.")
@click.pass_context
def uploads_add(ctx, path: Path, text_field: str) -> None:
    """Upload a corpus; prints its id (a harvest's corpus.upload_id)."""
    up = _call(ctx, "upload", path, text_field=text_field)
    click.echo(f"{up['upload_id']}  {up['size']:,} bytes  {up['n_documents']:,} documents  {up['key']}")


@uploads.command("list")
@_json_option
@click.pass_context
def uploads_list(ctx, as_json: bool) -> None:
    """Your team's uploads and how much of its quota they use."""
    found, cursor = [], None
    while True:  # a page at a time: at most the team's max_uploads in all
        listed = _call(ctx, "uploads", cursor=cursor)
        found += listed["uploads"]
        if (cursor := listed["next_cursor"]) is None:
            break
    if as_json:
        quota = {k: v for k, v in listed.items() if k not in ("uploads", "next_cursor")}
        return click.echo(json.dumps({**quota, "uploads": found}, indent=2))
    for up in found:
        storing = "  (storing)" if up.get("state") == "storing" else ""
        click.echo(f"{up['upload_id']}  {up['size']:>14,}  {up['n_documents']:>9,} docs  {up['key']}{storing}")
    click.echo(f"{listed['used_bytes']:,} of {listed['max_upload_bytes']:,} bytes used")
    click.echo(f"{listed['n_uploads']:,} of {listed['max_uploads']:,} uploads")


@uploads.command("delete")
@click.argument("upload_id")
@click.pass_context
def uploads_delete(ctx, upload_id: str) -> None:
    """Delete an upload (jobs that still read it fail) and free its bytes."""
    _call(ctx, "delete_upload", upload_id)
    click.echo(f"deleted upload {upload_id}")
