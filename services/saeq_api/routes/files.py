"""Signed downloads for the local-directory store (S3 serves its own presigned URLs)."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from saeq.store import LocalStore, sign_local
from saeq_api.deps import Services, services
from saeq_api.schemas import errors

router = APIRouter(tags=["files"], responses=errors(403, 404))


@router.get("/v1/files/{key:path}", response_class=FileResponse)
def download_file(key: str, svc: Annotated[Services, Depends(services)],
                  expires: Annotated[int, Query()], sig: Annotated[str, Query(max_length=64)]):
    store = svc.store
    if not isinstance(store, LocalStore):
        raise HTTPException(404, detail="this deployment serves files from S3")
    if expires < time.time():
        raise HTTPException(403, detail="download link expired")
    if not hmac.compare_digest(sign_local(store.signing_key, key, expires), sig):
        raise HTTPException(403, detail="bad download signature")
    try:
        path = store.local_path(key)
    except ValueError:
        raise HTTPException(404, detail="no such file") from None
    if not path.is_file():
        raise HTTPException(404, detail="no such file")
    return FileResponse(path, filename=path.name)
