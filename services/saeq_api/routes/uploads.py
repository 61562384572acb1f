"""Corpus uploads: text or JSONL files that harvest jobs read from the store.

An upload is spooled to a temporary file as it arrives (Starlette keeps 1 MiB in memory), checked
line by line and copied to the store from that file, so the API holds about one line of it in
memory, whatever its size. Its bytes count against the team's `max_upload_bytes` quota until it is
deleted.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response, UploadFile
from fastapi import Query

from saeq import keys
from saeq.corpus import validate_upload
from saeq.registry import new_id
from saeq_api.deps import Caller, Services, services
from saeq_api.routes.jobs import _unprocessable
from saeq_api.schemas import UploadList, UploadPublic, errors

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=errors(401, 413, 503))
Svc = Annotated[Services, Depends(services)]
UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


@router.post("", status_code=201, response_model=UploadPublic, responses=errors(422))
def upload_corpus(file: UploadFile, svc: Svc, who: Caller,
                  text_field: Annotated[str, Query(max_length=100)] = "text") -> UploadPublic:
    """Upload a corpus file: `.txt` (documents separated by blank lines) or `.jsonl` (one object
    per line with a `text_field`). It is checked before it is stored; only the caller's team can
    harvest it. 413 beyond the file size limit or the team's `max_upload_bytes` quota."""
    name = file.filename or ""
    if not (name.endswith(".txt") or name.endswith(".jsonl")):
        raise _unprocessable("file", f"file {name!r}: only .txt and .jsonl corpora are accepted")
    spooled = file.file
    size = spooled.seek(0, os.SEEK_END)
    if size > svc.settings.max_upload_bytes:
        raise HTTPException(413, detail=f"file {name!r} is larger than {svc.settings.max_upload_bytes} bytes "
                                        "(SAEQ_MAX_UPLOAD_BYTES)")
    spooled.seek(0)
    try:
        n_docs = validate_upload(name, spooled, text_field)
        upload_id = new_id()
        key = keys.upload(upload_id, name.rsplit("/", 1)[-1])
    except ValueError as e:
        raise _unprocessable("file", f"file {name!r}: {e}") from None
    limit = svc.teams.quota(who.team).max_upload_bytes
    ok, used = svc.registry.reserve_upload(upload_id, who.team, size, limit,
                                           {"key": key, "n_documents": n_docs, "created_at": time.time()})
    if not ok:
        raise HTTPException(413, detail=f"team {who.team!r} keeps {used} bytes of uploads; {name!r} "
                                        f"({size} bytes) would pass its quota max_upload_bytes={limit}. "
                                        "Delete uploads it no longer needs (DELETE /v1/uploads/{id}, "
                                        "`saeq uploads delete ID`) or ask an admin for more.")
    spooled.seek(0)
    try:
        svc.store.put(key, spooled, length=size, content_type="text/plain; charset=utf-8")
    except BaseException:
        svc.registry.release_upload(upload_id, who.team)  # nothing stored: nothing counted
        raise
    return UploadPublic(upload_id=upload_id, key=key, size=size, n_documents=n_docs)


@router.get("", response_model=UploadList)
def list_uploads(svc: Svc, who: Caller) -> UploadList:
    """The caller's team's uploads and the bytes they count against its quota."""
    rows, used = svc.registry.uploads(who.team)
    return UploadList(uploads=[UploadPublic(**row) for row in rows], used_bytes=used,
                      max_upload_bytes=svc.teams.quota(who.team).max_upload_bytes)


@router.delete("/{upload_id}", status_code=204, response_class=Response, responses=errors(404))
def delete_upload(upload_id: UploadId, svc: Svc, who: Caller) -> Response:
    """Delete an upload of the caller's team (an admin: of any team) and free its quota. Jobs
    that still read it fail with not_found (a label job reads the documents of its harvest's
    upload)."""
    owner = svc.registry.upload_owner(upload_id)
    if owner is None or not who.sees({"team": owner}):
        raise HTTPException(404, detail=f"no upload {upload_id!r}")  # another team's looks missing
    for obj in svc.store.list(keys.upload_prefix(upload_id)):
        svc.store.delete(obj.key)
    svc.registry.release_upload(upload_id, owner)  # last: a failed delete can be retried
    return Response(status_code=204)
