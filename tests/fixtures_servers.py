"""Session-scoped fixtures with real servers on loopback; registered from tests/conftest.py.

Logs are kept in pytest's tmp dir (the last three runs are kept), so a failure can be read after.
"""

from collections.abc import Iterator

import pytest

from tests.servers import RedisServer, S3Server, redis_server, s3_server


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server for the whole session (no persistence); `.url` is its redis:// URL."""
    with redis_server(log_dir=tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture(scope="session")
def s3_srv(tmp_path_factory) -> Iterator[S3Server]:
    """SeaweedFS for the whole session: `.endpoint`, `.access_key`, `.secret_key`, `.bucket`."""
    with s3_server(log_dir=tmp_path_factory.mktemp("s3")) as srv:
        yield srv
