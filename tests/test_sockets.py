"""Socket.IO: authenticated connections only, vram_update on connect and per tick, logout/expiry."""
import pytest

from tests.fakes.scripted_reader import ScriptedReader, reading


@pytest.fixture
def nvml_reader():
    return ScriptedReader(reading(ts=1.0), reading(ts=2.0), reading(ts=3.0))


@pytest.fixture
def connect(app, client, services):
    clients = []

    def _connect(token=None, **kwargs):
        auth = {"token": token} if token is not None else None
        sio = services.socketio.test_client(app, flask_test_client=client, auth=auth, **kwargs)
        clients.append(sio)
        return sio

    yield _connect
    for sio in clients:
        if sio.is_connected():
            sio.disconnect()


def token_of(auth):
    return auth.headers()["Authorization"].split()[1]


@pytest.mark.parametrize("auth_payload", [None, {}, {"token": ""}, {"token": "forged"}, {"token": 42}, "token"])
def test_connection_refused_without_a_valid_token(app, client, services, auth_payload):
    sio = services.socketio.test_client(app, flask_test_client=client, auth=auth_payload)
    assert not sio.is_connected()


def test_token_in_query_string_is_refused(app, client, services, auth):
    sio = services.socketio.test_client(app, flask_test_client=client, query_string=f"token={token_of(auth)}")
    assert not sio.is_connected()


def test_latest_snapshot_right_after_connect(connect, auth, services):
    services.poller.tick()
    sio = connect(token_of(auth))
    assert sio.is_connected()
    events = sio.get_received()
    assert [e["name"] for e in events] == ["vram_update"]
    assert events[0]["args"][0]["timestamp"] == 1.0


def test_every_tick_is_broadcast_to_authenticated_sockets(connect, auth, services):
    sio = connect(token_of(auth))
    sio.get_received()
    services.poller.tick()
    services.poller.tick()
    updates = [e["args"][0]["timestamp"] for e in sio.get_received() if e["name"] == "vram_update"]
    assert updates == [1.0, 2.0]


def test_logout_disconnects_sockets_opened_with_that_token(connect, auth, client, services):
    other = auth.__class__(client)
    mine, theirs = connect(token_of(auth)), connect(token_of(other))
    assert client.post("/api/auth/logout", headers=auth.headers()).status_code == 200
    assert not mine.is_connected()
    assert theirs.is_connected()
    assert services.hub.connection_count == 1


def test_expired_session_is_disconnected_by_the_session_stores_own_check(connect, auth, clock, services):
    sio = connect(token_of(auth))
    clock.advance(24 * 3600 - 1)
    assert services.sessions.purge_expired() == [] and sio.is_connected()
    clock.advance(2)
    assert [s.username for s in services.sessions.purge_expired()] == ["admin"]
    assert not sio.is_connected()
