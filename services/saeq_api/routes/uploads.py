"""Corpus uploads: text or JSONL files that harvest jobs read from the store.

An upload is spooled to a temporary file as it arrives (Starlette keeps 1 MiB in memory), checked
line by line and copied to the store from that file, so the API holds about one line of it in
memory, whatever its size. It counts against the team's `max_upload_bytes` and `max_uploads`
quotas from before its bytes are stored until they are deleted; it is `storing` until its put ends,
and a DELETE meanwhile answers 409, so no stored bytes are ever left that no quota counts.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, UploadFile

from saeq import keys
from saeq.platform.registry import new_id
from saeq.platform.teams import TeamQuota
from saeq.specs.uploads import validate_upload
from saeq_api.deps import Caller, Services, services
from saeq_api.schemas import UploadList, UploadPublic, errors
from saeq_api.submit import unprocessable

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=errors(401, 413, 503))
Svc = Annotated[Services, Depends(services)]
UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
STORING_STALE_S = 15 * 60.0
"""An upload `storing` for longer than this was left by an API that died mid-put (512 MiB at under
1 MB/s would take this long): DELETE then removes it, and a put still running finds it gone."""


@router.post("", status_code=201, response_model=UploadPublic, responses=errors(409, 422, 429))
def upload_corpus(
    file: UploadFile, svc: Svc, who: Caller, text_field: Annotated[str, Query(max_length=100)] = "text"
) -> UploadPublic:
    """Upload a corpus file: `.txt` (documents separated by blank lines) or `.jsonl` (one object
    per line with a `text_field`). It is checked before it is stored; only the caller's team can
    harvest it. 413 beyond the file size limit or the team's `max_upload_bytes` quota; 429 beyond its
    `max_uploads`, or `submits_per_minute` uploads in 60 s."""
    name = file.filename or ""
    if not (name.endswith(".txt") or name.endswith(".jsonl")):
        raise unprocessable("file", f"file {name!r}: only .txt and .jsonl corpora are accepted")
    spooled = file.file
    size = spooled.seek(0, os.SEEK_END)
    if size > svc.settings.max_upload_bytes:
        raise HTTPException(
            413, detail=f"file {name!r} is larger than {svc.settings.max_upload_bytes} bytes (SAEQ_MAX_UPLOAD_BYTES)"
        )
    spooled.seek(0)
    try:
        n_docs = validate_upload(name, spooled, text_field)
        upload_id = new_id()
        key = keys.upload(upload_id, name.rsplit("/", 1)[-1])
    except ValueError as e:
        raise unprocessable("file", f"file {name!r}: {e}") from None
    quota = svc.teams.quota(who.team)
    record = {"key": key, "n_documents": n_docs, "created_at": time.time()}
    status, figure = svc.registry.reserve_upload(
        upload_id,
        who.team,
        size,
        record,
        max_bytes=quota.max_upload_bytes,
        max_uploads=quota.max_uploads,
        per_minute=quota.submits_per_minute,
    )
    _refuse(status, figure, who.team, name, size, quota)
    spooled.seek(0)
    try:
        svc.store.put(key, spooled, length=size, content_type="text/plain; charset=utf-8")
    except BaseException:
        svc.registry.release_upload(upload_id, who.team)  # nothing stored: nothing counted
        raise
    if not svc.registry.commit_upload(upload_id, who.team, size, record):
        # Deleted while storing (its reservation had gone stale): these bytes are no one's now.
        svc.store.delete(key)
        raise HTTPException(
            409, detail=f"upload {upload_id} was deleted while its bytes were stored; nothing is kept, upload it again"
        )
    return UploadPublic(upload_id=upload_id, key=key, size=size, n_documents=n_docs, created_at=record["created_at"])


def _refuse(status: str, figure: int, team: str, name: str, size: int, quota: TeamQuota) -> None:
    if status == "bytes":
        raise HTTPException(
            413,
            detail=(
                f"team {team!r} keeps {figure} bytes of uploads; {name!r} ({size} bytes) would pass its quota "
                f"max_upload_bytes={quota.max_upload_bytes}. Delete uploads it no longer needs "
                "(DELETE /v1/uploads/{id}, `saeq uploads delete ID`) or ask an admin for more."
            ),
        )
    if status == "count":
        raise HTTPException(
            429,
            headers={"Retry-After": "60"},
            detail=(
                f"team {team!r} keeps {figure} uploads (quota max_uploads={quota.max_uploads}); delete some "
                "(DELETE /v1/uploads/{id}, `saeq uploads delete ID`) or ask an admin for more"
            ),
        )
    if status == "rate":
        raise HTTPException(
            429,
            headers={"Retry-After": str(figure)},
            detail=(
                f"team {team!r} made {quota.submits_per_minute} uploads in the last 60 s (quota "
                f"submits_per_minute={quota.submits_per_minute}, which bounds uploads too); retry in {figure} s"
            ),
        )


@router.get("", response_model=UploadList)
def list_uploads(
    svc: Svc,
    who: Caller,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=r"^\d{10}\.\d{6}/[0-9a-f]{32}$", description="next_cursor of the previous page")
    ] = None,
) -> UploadList:
    """A page of the caller's team's uploads, oldest first, and what they count against its quotas."""
    rows, next_cursor, used, n = svc.registry.uploads(who.team, limit=limit, after=cursor)
    quota = svc.teams.quota(who.team)
    return UploadList(
        uploads=[UploadPublic(**row) for row in rows],
        next_cursor=next_cursor,
        used_bytes=used,
        max_upload_bytes=quota.max_upload_bytes,
        n_uploads=n,
        max_uploads=quota.max_uploads,
    )


@router.delete("/{upload_id}", status_code=204, response_class=Response, responses=errors(404, 409))
def delete_upload(upload_id: UploadId, svc: Svc, who: Caller) -> Response:
    """Delete an upload of the caller's team (an admin: of any team) and free its quota. Jobs
    that still read it fail with not_found (a label job reads the documents of its harvest's
    upload). 409 while its bytes are being stored."""
    owner = svc.registry.upload_owner(upload_id)
    record = svc.registry.upload_record(upload_id, owner) if owner else None
    if owner is None or record is None or not who.sees({"team": owner}):
        raise HTTPException(404, detail=f"no upload {upload_id!r}")  # another team's looks missing
    age_s = time.time() - (record.get("created_at") or 0)
    if record["state"] == "storing" and age_s < STORING_STALE_S:
        raise HTTPException(
            409,
            detail=f"upload {upload_id} is still storing (for {age_s:.0f} s); delete it once it is listed as stored",
        )
    _delete_bytes(svc, upload_id)
    svc.registry.release_upload(upload_id, owner)  # after: a failed delete can be retried
    if record["state"] == "storing":
        _delete_bytes(svc, upload_id)  # a stale put that ended before the release (its commit passed)
    return Response(status_code=204)


def _delete_bytes(svc: Services, upload_id: str) -> None:
    for obj in svc.store.list(keys.upload_prefix(upload_id)):
        svc.store.delete(obj.key)
