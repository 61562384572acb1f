"""The shape of an API key, `saeq_{key_id}_{secret}`: made by the platform's teams (saeq.platform.teams)
and by `saeq keys new` in the client, which must not need Redis to print one."""

from __future__ import annotations

import secrets


def new_key() -> tuple[str, str]:
    """(key_id, key): the id is public (listings, revocation); the key is the secret."""
    key_id = secrets.token_hex(8)
    return key_id, f"saeq_{key_id}_{secrets.token_urlsafe(32)}"
