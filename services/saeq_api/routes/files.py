"""Signed downloads for the local-directory store (S3 serves its own presigned URLs).

The route takes no API key: the link's signature is the authority, so its parameters are checked
before any file-system call, and a link never lives longer than the store's link TTL.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from saeq.platform.store import LocalStore
from saeq_api.deps import Services, services
from saeq_api.schemas import errors

router = APIRouter(tags=["files"], responses=errors(403, 404))

MAX_KEY_CHARS = 1024
MAX_SEGMENT_BYTES = 255  # a file name's limit on Linux file systems


@router.get("/v1/files/{key:path}", response_class=FileResponse)
def download_file(
    key: str,
    svc: Annotated[Services, Depends(services)],
    expires: Annotated[int, Query(description="Unix time the link expires at.")],
    sig: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 of the key and expires, in hex.")],
):
    store = svc.store
    if not isinstance(store, LocalStore):
        raise HTTPException(404, detail="this deployment serves files from S3")
    if problem := _key_problem(key):
        raise HTTPException(
            422, detail=[{"loc": ["path", "key"], "field": "key", "msg": problem, "type": "value_error"}]
        )
    if refusal := store.link_refusal(key, expires, sig):
        raise HTTPException(403, detail=refusal)
    try:
        path = store.local_path(key)
    except ValueError:
        raise HTTPException(404, detail="no such file") from None
    if not path.is_file():
        raise HTTPException(404, detail="no such file")
    return FileResponse(path, filename=path.name)


def _key_problem(key: str) -> str | None:
    """Why `key` cannot name a stored object (it would make the file system raise), or None."""
    if len(key) > MAX_KEY_CHARS:
        return f"an object key has at most {MAX_KEY_CHARS} characters, this one {len(key):,}"
    if not key.isprintable():
        return "an object key holds no control characters (NUL, newlines)"
    if any(len(part.encode()) > MAX_SEGMENT_BYTES for part in key.split("/")):
        return f"each part of an object key between slashes has at most {MAX_SEGMENT_BYTES} bytes"
    return None
