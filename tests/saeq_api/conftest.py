import itertools
import secrets

import pytest
from fastapi.testclient import TestClient

from saeq.platform.teams import new_key
from saeq_api.main import create_app
from saeq_api.settings import ApiSettings

_db = itertools.count(20)


@pytest.fixture
def api_settings(redis_srv, s3_srv) -> ApiSettings:
    """Settings for an API on the session's real Redis (a fresh database) and S3; no worker runs,
    so submitted jobs stay queued."""
    import redis

    url = f"{redis_srv.url.rsplit('/', 1)[0]}/{next(_db) % 16}"
    redis.Redis.from_url(url).flushdb()
    return ApiSettings(
        redis_url=url,
        store=f"s3://{s3_srv.bucket}",
        s3_endpoint=s3_srv.endpoint,
        s3_access_key=s3_srv.access_key,
        s3_secret_key=s3_srv.secret_key,
        bootstrap_admin_key=new_key()[1],
        signing_key=secrets.token_hex(32),
    )


@pytest.fixture
def api(api_settings) -> TestClient:
    """A TestClient that sends the bootstrap admin key; `api.key_for(team)` makes a member's headers."""
    key = api_settings.bootstrap_admin_key.get_secret_value()
    with TestClient(create_app(api_settings), headers={"Authorization": f"Bearer {key}"}) as c:
        c.key_for = lambda team: _member_headers(c, team)
        yield c


def _member_headers(api: TestClient, team: str) -> dict[str, str]:
    resp = api.post("/v1/admin/keys", json={"team": team, "name": f"test {team}"})
    assert resp.status_code == 201, resp.text
    return {"Authorization": f"Bearer {resp.json()['key']}"}
