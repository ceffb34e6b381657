"""Pytest fixtures over tests/servers.py: one real PostgreSQL and one real Redis per test session.

Each starts the first time a test asks for it (a run that needs neither starts neither) and stops
at the end of the session. Tests that use them get the ``services`` marker automatically, so
``-m "not services"`` leaves them out.

- ``postgres_url``: a fresh, empty database per test (CREATE DATABASE ... TEMPLATE template0,
  about 0.3 s on 2 shared cores). The alternative, one database per session and a schema reset
  (DROP SCHEMA public CASCADE) per test, is faster but leaks whatever lives outside the schema
  (extensions, roles, sequences in other schemas) from test to test; a fresh database cannot.
  For a suite of migrated databases, migrate one once and create the others with
  ``postgres_server.create_database(template=<it>)``. The databases are not dropped: the whole
  cluster goes at the end of the session.
- ``redis_url``: database 0 of the session's Redis, FLUSHALLed before the test; if an earlier
  test killed or stopped the server, it is started again (same port) first.
"""
from __future__ import annotations

import pytest

from tests.servers import PostgresServer, RedisServer, find_postgres_bindir, find_redis_server

SERVER_FIXTURES = {"postgres_server", "postgres_url", "redis_server", "redis_url"}
INSTALL_HINT = "run ./scripts/test.sh once (it installs Debian's postgresql and redis-server)"


def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        # A test parametrized onto PostgreSQL (tests/test_teams.py's database_url) asks for the
        # server inside its fixture; its parameter says so.
        on_postgres = callspec is not None and "postgresql" in callspec.params.values()
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or on_postgres:
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (tests.servers.PostgresServer), running."""
    if find_postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found (PG_BINDIR or /usr/lib/postgresql/*/bin/initdb): "
                    f"{INSTALL_HINT}")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The SQLAlchemy URL (postgresql+psycopg://) of a new, empty database."""
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def redis_server():
    """redis-server on 127.0.0.1 (tests.servers.RedisServer), running."""
    if find_redis_server() is None:
        pytest.skip(f"redis-server not found (/usr/bin/redis-server): {INSTALL_HINT}")
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """redis://127.0.0.1:<port>/0, running and empty."""
    redis_server.start()
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url
