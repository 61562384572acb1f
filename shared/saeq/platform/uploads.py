"""Uploaded corpora in Redis: their records and owners, counted against their team's quota."""

from __future__ import annotations

import json
import time
from typing import Any, cast

from saeq.platform import lua_scripts, redis_keys
from saeq.platform.job_core import JobCore


def upload_order_member(created_at: float, upload_id: str) -> str:
    """An upload's member in its team's `upload_order` (all scores 0): sorted by name, oldest
    first, ties by id, so a page resumes exactly after the previous page's last member."""
    return f"{created_at:017.6f}/{upload_id}"


class Uploads(JobCore):
    """Reserve, commit, list and release uploads."""

    def reserve_upload(
        self,
        upload_id: str,
        team: str,
        size: int,
        record: dict[str, Any],
        *,
        max_bytes: int,
        max_uploads: int,
        per_minute: int,
    ) -> tuple[str, int]:
        """Count an upload against its team's quota and record it, `storing` (owner, and `record`:
        key, documents, created_at), in one step. Returns (status, figure): ("ok", bytes now
        counted), ("bytes", bytes counted already), ("count", uploads kept) or ("rate", seconds to
        wait; `per_minute` reserves in any 60 s). Called before the bytes are stored, so a crash in
        between leaves a record the team can delete, never stored bytes that nobody counts."""
        status, figure = self.r.register_script(lua_scripts.RESERVE_UPLOAD)(
            keys=[*self._upload_keys(team, upload_id), redis_keys.team(team, "upload_times")],
            args=[
                upload_id,
                size,
                max_bytes,
                self._upload_json(record, size, "storing"),
                team,
                upload_order_member(record["created_at"], upload_id),
                max_uploads,
                per_minute,
                time.time(),
            ],
        )
        return str(status), int(figure)

    def commit_upload(self, upload_id: str, team: str, size: int, record: dict[str, Any]) -> bool:
        """Mark a reserved upload `stored` once its bytes are; False when it was deleted meanwhile
        (the caller then deletes the bytes it stored)."""
        return bool(
            self.r.register_script(lua_scripts.COMMIT_UPLOAD)(
                keys=[redis_keys.team(team, "uploads")],
                args=[upload_id, self._upload_json(record, size, "storing"), self._upload_json(record, size, "stored")],
            )
        )

    def release_upload(self, upload_id: str, team: str) -> int:
        """Forget an upload (its bytes stop counting); the bytes freed."""
        return int(
            self.r.register_script(lua_scripts.RELEASE_UPLOAD)(
                keys=self._upload_keys(team, upload_id), args=[upload_id]
            )
        )

    def uploads(
        self, team: str, *, limit: int, after: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None, int, int]:
        """A page of the team's uploads, oldest first, after the cursor `after`: (rows, the next
        page's cursor or None, bytes counted, uploads kept)."""
        order = redis_keys.team(team, "upload_order")
        if self.r.zcard(order) < self.r.hlen(redis_keys.team(team, "uploads")):  # records older than the order
            self.r.zadd(
                order,
                {
                    upload_order_member(json.loads(v).get("created_at") or 0, k): 0
                    for k, v in cast(dict[str, str], self.r.hgetall(redis_keys.team(team, "uploads"))).items()
                },
                nx=True,
            )
        members = cast(
            list[str], self.r.zrange(order, f"({after}" if after else "-", "+", bylex=True, offset=0, num=limit + 1)
        )
        ids = [m.rsplit("/", 1)[1] for m in members[:limit]]
        pipe = self.r.pipeline(transaction=False)
        pipe.get(redis_keys.team(team, "upload_bytes"))
        pipe.hlen(redis_keys.team(team, "uploads"))
        for upload_id in ids:
            pipe.hget(redis_keys.team(team, "uploads"), upload_id)
        used, n, *records = pipe.execute()
        # "stored": records older than the states were all stored
        rows = [{"upload_id": i, "state": "stored", **json.loads(v)} for i, v in zip(ids, records, strict=False) if v]
        return rows, (members[limit - 1] if len(members) > limit else None), int(used or 0), int(n)

    def upload_record(self, upload_id: str, team: str) -> dict[str, Any] | None:
        raw = self.r.hget(redis_keys.team(team, "uploads"), upload_id)
        return {"upload_id": upload_id, "state": "stored", **json.loads(raw)} if raw else None

    def upload_owner(self, upload_id: str) -> str | None:
        return cast(str | None, self.r.get(redis_keys.upload_owner(upload_id)))

    @staticmethod
    def _upload_keys(team: str, upload_id: str) -> list[str]:
        return [
            redis_keys.team(team, "upload_bytes"),
            redis_keys.team(team, "uploads"),
            redis_keys.upload_owner(upload_id),
            redis_keys.team(team, "upload_order"),
        ]

    @staticmethod
    def _upload_json(record: dict[str, Any], size: int, state: str) -> str:
        return json.dumps({**record, "size": size, "state": state}, sort_keys=True)
