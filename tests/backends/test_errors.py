"""Driver exceptions never escape a backend: each is translated at one boundary into a
stepstream error whose ``__cause__`` is the original (``errors.py``)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
import redis.exceptions

from stepstream import HistoryPolicy
from stepstream.backends.redis import RedisBackend
from stepstream.backends.sqlite import SQLiteBackend
from stepstream.errors import BackendError, BackendUnavailable
from tests.conftest import free_port

pytestmark = pytest.mark.anyio

FOREVER = HistoryPolicy()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(BackendUnavailable, match="cannot open SQLite database") as caught:
        await SQLiteBackend(path).open()
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


async def test_sqlite_errors_of_a_job_are_backend_errors(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "app.db")
    await backend.open()
    try:
        refused = "INSERT INTO rt_channels (name, last_ms, last_seq) VALUES ('c', NULL, 0)"
        with pytest.raises(BackendError) as caught:
            await backend._db.submit(lambda conn: conn.execute(refused), write=True)
        assert not isinstance(caught.value, BackendUnavailable)
        assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
        # The failed job rolled back alone: the backend goes on working.
        assert (await backend.append("c", "t.e", "1", FOREVER)).id
    finally:
        await backend.close()


async def test_an_unreachable_redis_is_unavailable() -> None:
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BackendUnavailable) as caught:
        await backend.open()
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)


async def test_a_redis_command_error_is_a_backend_error(redis_server: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    backend = RedisBackend.from_url(f"{redis_server}?prefix={prefix}")
    await backend.open()
    try:
        await backend._conn.redis().set(f"{prefix}rt:{{c}}", "a string, not a stream")
        with pytest.raises(BackendError) as caught:
            await backend.read("c")
        assert not isinstance(caught.value, BackendUnavailable)
        assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
        with pytest.raises(BackendError) as caught:
            await backend.append("c", "t.e", "1", FOREVER)
        assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    finally:
        await backend.close()
