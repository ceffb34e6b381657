"""The real-server fixtures work: SQLAlchemy over psycopg on PostgreSQL, redis-py on Redis."""
from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa

from tests.servers import PostgresServer, RedisServer, ServerError

pytestmark = pytest.mark.services


@pytest.fixture
def engine(postgres_url):
    engine = sa.create_engine(postgres_url)
    yield engine
    engine.dispose()


def test_postgres_create_insert_select(engine):
    metadata = sa.MetaData()
    models = sa.Table("models", metadata, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("name", sa.Text, nullable=False), sa.Column("vram_mib", sa.BigInteger))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(models.insert(), [{"name": "llama3:8b", "vram_mib": 5120}, {"name": "qwen2:0.5b", "vram_mib": 700}])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models.c.name, models.c.vram_mib).order_by(models.c.vram_mib)).all()
        assert rows == [("qwen2:0.5b", 700), ("llama3:8b", 5120)]
        assert conn.dialect.driver == "psycopg"
        assert conn.execute(sa.text("SHOW fsync")).scalar() == "off"


def test_postgres_each_test_gets_a_fresh_database(engine, postgres_server):
    assert sa.inspect(engine).get_table_names() == []
    assert engine.url.host == "127.0.0.1" and engine.url.port == postgres_server.port
    assert postgres_server.url_for(engine.url.database) == engine.url.render_as_string()


def test_postgres_listens_on_loopback_only(engine):
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW listen_addresses")).scalar() == "127.0.0.1"


def test_postgres_named_database_and_template(postgres_server):
    url = postgres_server.create_database("seeded")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (42)"))
    finally:
        engine.dispose()
    copy = sa.create_engine(postgres_server.create_database("seeded_copy", template="seeded"))
    try:
        with copy.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM t")).scalar() == 42
    finally:
        copy.dispose()
    postgres_server.drop_database("seeded")
    postgres_server.drop_database("seeded_copy")


def test_redis_set_get(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.set("gpu:0:used", 1234)
    assert client.get("gpu:0:used") == b"1234"
    client.close()


def test_redis_is_flushed_between_tests(redis_url):
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("left:behind", 1)
    client.close()


def test_redis_kill_restart_and_reconnect(redis_url, redis_server):
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    client.set("before", 1)
    port = redis_server.port
    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.start()
    assert redis_server.port == port and redis_server.url == redis_url
    # redis-py's pool drops the dead connection and dials again on the next command.
    assert client.ping()
    assert client.get("before") is None  # no persistence: a restart starts empty
    redis_server.restart()
    assert client.set("after", 2) and client.get("after") == b"2"
    client.close()


def test_redis_stopped_server_is_started_again_by_the_next_test(redis_server):
    redis_server.stop()
    assert not redis_server.running


def test_redis_url_restarts_a_stopped_server(redis_url, redis_server):
    assert redis_server.running
    with redis_server.client() as client:
        assert client.ping()


def test_redis_start_failure_reports_the_log(redis_server):
    taken = RedisServer(port=redis_server.port)  # that port is redis_server's, so bind fails
    try:
        with pytest.raises(ServerError, match=r"(?s)exited with.*already in use"):
            taken.start()
    finally:
        taken.close()


def test_postgres_start_failure_reports_the_log(postgres_server):
    taken = PostgresServer(port=postgres_server.port)
    try:
        with pytest.raises(ServerError, match=r"(?s)exited with.*already in use"):
            taken.start()
    finally:
        taken.stop()
