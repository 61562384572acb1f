"""Corpus uploads: text or JSONL files that harvest jobs read from the store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, UploadFile
from fastapi import Query

from saeq import keys
from saeq.corpus import validate_upload
from saeq.registry import new_id
from saeq_api.deps import Caller, Services, services
from saeq_api.routes.jobs import _unprocessable
from saeq_api.schemas import UploadPublic, errors

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=errors(401, 413, 503))


@router.post("", status_code=201, response_model=UploadPublic)
def upload_corpus(file: UploadFile, svc: Annotated[Services, Depends(services)], who: Caller,
                  text_field: Annotated[str, Query(max_length=100)] = "text") -> UploadPublic:
    """Upload a corpus file: `.txt` (documents separated by blank lines) or `.jsonl` (one object
    per line with a `text_field`). It is checked before it is stored; only the caller's team can
    harvest it."""
    name = file.filename or ""
    if not (name.endswith(".txt") or name.endswith(".jsonl")):
        raise _unprocessable("file", f"file {name!r}: only .txt and .jsonl corpora are accepted")
    data = file.file.read(svc.settings.max_upload_bytes + 1)
    if len(data) > svc.settings.max_upload_bytes:
        raise HTTPException(413, detail=f"file {name!r} is larger than {svc.settings.max_upload_bytes} bytes")
    try:
        n_docs = validate_upload(name, data, text_field)
        upload_id = new_id()
        key = keys.upload(upload_id, name.rsplit("/", 1)[-1])
    except ValueError as e:
        raise _unprocessable("file", f"file {name!r}: {e}") from None
    svc.store.put(key, data, content_type="text/plain; charset=utf-8")
    svc.registry.set_upload_owner(upload_id, who.team)
    return UploadPublic(upload_id=upload_id, key=key, size=len(data), n_documents=n_docs)
