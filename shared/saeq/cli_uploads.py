"""`saeq uploads ...`: corpus files a team uploaded for harvests, and its storage quota."""

from __future__ import annotations

from pathlib import Path

import click

from saeq.cli_teams import _call


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
@click.pass_context
def uploads_list(ctx) -> None:
    """Your team's uploads and how much of its quota they use."""
    listed = _call(ctx, "uploads")
    for up in listed["uploads"]:
        click.echo(f"{up['upload_id']}  {up['size']:>14,}  {up['n_documents']:>9,} docs  {up['key']}")
    click.echo(f"{listed['used_bytes']:,} of {listed['max_upload_bytes']:,} bytes used")


@uploads.command("delete")
@click.argument("upload_id")
@click.pass_context
def uploads_delete(ctx, upload_id: str) -> None:
    """Delete an upload (jobs that still read it fail) and free its bytes."""
    _call(ctx, "delete_upload", upload_id)
    click.echo(f"deleted upload {upload_id}")
