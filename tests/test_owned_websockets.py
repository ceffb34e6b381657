"""The websocket owner (sockets/owner.py) against server.serve() in this process, over loopback.

Upgraded websockets leave their request's green thread for one epoll loop; Engine.IO's pings come
from one sweep. These tests watch both ends: what a raw RFC 6455 client sees (the same bytes as a
browser would), and what the server keeps (green threads, Engine.IO and python-socketio sessions,
the pool's and the address's counts), including after every way a connection can end.
"""
from __future__ import annotations

import gc
import json
import os
import socket
import struct
import time
import zlib

import greenlet
import pytest

import concurrency
import server
from sockets.frames import SharedFrames, unmask
from sockets.owner import WebsocketOwner, _without_context_takeover
from tests.live import wait_for
from tests.test_broadcast import RawClient

PER_ADDRESS = 3


@pytest.fixture
def inproc(app, services):
    """server.serve() on a loopback port in a green thread of this process; its state at hand."""
    listener = server.listen("127.0.0.1", 0)
    thread = concurrency.spawn(server.serve, listener, app, log_output=False, max_connections=64,
                               limits=server.ConnectionLimits(max_per_client=PER_ADDRESS), stop_grace_s=0.5)
    sio = services.socketio.server

    class Live:
        port = listener.getsockname()[1]
        owner: WebsocketOwner = sio.manager.writer
        eio = sio.eio

        @staticmethod
        def stop():
            thread.kill()

    yield Live
    thread.kill()


@pytest.fixture
def token(auth):
    return auth.headers()["Authorization"].split()[1]


@pytest.fixture
def clients():
    opened = []

    def _open(port, **kwargs):
        client = RawClient(port, **kwargs)
        opened.append(client)
        return client

    yield _open
    for client in opened:
        client.close()


def green_threads() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def masked_frame(first_byte: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first_byte, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first_byte, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first_byte, 0x80 | 127, length)
    return header + mask + unmask(payload, mask)


def deflated(text: str) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    return (compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def closed_by_server(client: RawClient, within_s: float = 3.0) -> list[tuple[int, bytes]]:
    """Read until the server closes; return the frames (opcode, payload) it sent before the end."""
    client.sock.settimeout(within_s)
    frames = []
    try:
        while True:
            opcode, _, payload = client.recv_frame()
            frames.append((opcode, payload))
    except Exception:  # Closed at end-of-stream, or a reset
        return frames


def session_gone(live, services, sid: str) -> bool:
    return (sid not in live.eio.sockets and sid not in services.socketio.server.environ
            and live.owner.connections == 0 and services.hub.connection_count == 0)


# -- what an owned websocket keeps ----------------------------------------------------------------

def test_owned_websockets_keep_no_green_thread_and_only_a_slim_environ(inproc, services, clients, token):
    opened = [clients(inproc.port)]
    assert opened[0].connect_namespace({"token": token}).startswith("40{")
    # The loop, the ping sweep and Engine.IO's service task run now, one each for all sockets.
    with_one = green_threads()
    opened += [clients(inproc.port) for _ in range(PER_ADDRESS - 1)]
    for client in opened[1:]:
        assert client.connect_namespace({"token": token}).startswith("40{")
    assert inproc.owner.connections == PER_ADDRESS and services.hub.connection_count == PER_ADDRESS
    assert green_threads() == with_one  # none is per socket
    for sid, sock in inproc.eio.sockets.items():
        assert type(sock.queue).__name__ == "_OwnedQueue"
        environ = services.socketio.server.environ[sid]
        assert "eventlet.input" not in environ and concurrency.DETACH_CONNECTION not in environ
        assert environ["wsgi.input"].read() == b"" and environ["REMOTE_ADDR"] == "127.0.0.1"
    assert len(inproc.owner.pings) == PER_ADDRESS  # one entry each in the sweep's heap

    services.poller.tick()
    for client in opened:
        name, payload = client.next_event()
        assert name == "vram_update" and payload["gpus"]


def test_owned_websockets_carry_on_when_a_surprise_turns_the_owner_off(inproc, services, clients, token):
    ws = clients(inproc.port)
    assert ws.connect_namespace({"token": token}).startswith("40{")
    inproc.owner._off("a test's surprise")
    services.poller.tick()  # python-socketio's own emit: Engine.IO's send, the owned socket's queue
    assert ws.vram_updates(1)
    late = clients(inproc.port)  # a new websocket stays with Engine.IO's own handler
    assert late.connect_namespace({"token": token}).startswith("40{")
    assert inproc.owner.connections == 1 and inproc.owner.stats["stock"] == 1
    services.poller.tick()
    assert ws.vram_updates(1) and late.vram_updates(1)


def test_a_long_polling_client_upgrades_and_is_owned(inproc, services, token):
    import socketio

    got = []
    client = socketio.Client(reconnection=False)
    client.on("vram_update", got.append)
    client.connect(f"http://127.0.0.1:{inproc.port}", auth={"token": token}, wait_timeout=5)
    eio_sid = client.eio.sid
    try:
        assert wait_for(lambda: client.transport() == "websocket" and inproc.owner.connections == 1, 5)
        services.poller.tick()
        assert wait_for(lambda: got, 3) and got[-1]["gpus"]
    finally:
        client.disconnect()
    assert wait_for(lambda: session_gone(inproc, services, eio_sid), 3)


# -- pings ----------------------------------------------------------------------------------------

def test_pings_come_on_time_and_answered_ones_keep_the_socket(inproc, services, clients, token):
    inproc.eio.ping_interval, inproc.eio.ping_timeout = 0.3, 0.5
    client = clients(inproc.port)
    handshake = client.open()
    assert handshake["pingInterval"] == 0  # int(0.3) * 1000, as Engine.IO advertises it
    client.send_text("40" + json.dumps({"token": token}))
    pings = []
    started = time.monotonic()
    while time.monotonic() - started < 1.6:
        text = client.recv_text()
        if text == "2":
            pings.append(time.monotonic())
            client.send_text("3")
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 4 and all(0.25 < gap < 0.5 for gap in gaps), gaps
    assert inproc.owner.connections == 1
    services.poller.tick()
    assert client.vram_updates(1)


def test_a_client_that_stops_answering_pings_is_closed_and_forgotten(inproc, services, clients, token):
    inproc.eio.ping_interval, inproc.eio.ping_timeout = 0.2, 0.4
    client = clients(inproc.port)
    assert client.connect_namespace({"token": token}).startswith("40{")
    sid = next(iter(inproc.eio.sockets))
    frames = closed_by_server(client, within_s=3)  # never answers the pings
    assert (0x1, b"2") in frames and frames[-1][0] == 0x8, frames
    assert wait_for(lambda: session_gone(inproc, services, sid), 2)


# -- every way a connection ends -----------------------------------------------------------------

def test_logout_ends_the_namespace_and_an_engineio_disconnect_closes_the_socket(
        inproc, services, clients, client, auth, token):
    ws = clients(inproc.port)
    assert ws.connect_namespace({"token": token}).startswith("40{")
    sid = next(iter(inproc.eio.sockets))
    assert client.post("/api/auth/logout", headers=auth.headers()).status_code == 200
    # python-socketio ends the namespace ("41") and leaves the Engine.IO connection to the client.
    assert ws.recv_packet() == "41"
    assert services.hub.connection_count == 0 and inproc.owner.connections == 1
    inproc.eio.disconnect(sid)  # the server closing the connection itself
    frames = closed_by_server(ws)
    assert frames == [(0x1, b"1"), (0x8, b"")], frames  # Engine.IO's CLOSE, then the close frame
    assert wait_for(lambda: session_gone(inproc, services, sid), 2)


def test_a_client_close_frame_is_answered_and_the_session_ends(inproc, services, clients, token):
    ws = clients(inproc.port)
    assert ws.connect_namespace({"token": token}).startswith("40{")
    sid = next(iter(inproc.eio.sockets))
    ws.sock.sendall(masked_frame(0x88, struct.pack("!H", 1000)))
    frames = closed_by_server(ws)
    assert frames[-1] == (0x8, struct.pack("!H", 1000)), frames
    assert wait_for(lambda: session_gone(inproc, services, sid), 2)


def test_a_client_that_just_goes_away_is_forgotten(inproc, services, clients, token):
    ws = clients(inproc.port)
    assert ws.connect_namespace({"token": token}).startswith("40{")
    sid = next(iter(inproc.eio.sockets))
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()  # a reset
    assert wait_for(lambda: session_gone(inproc, services, sid), 2)


@pytest.mark.parametrize("frame, code", [
    (None, 1009),  # built below: a header announcing more than Engine.IO takes
    (b"\x81\x05hello", 1002),  # not masked
    (masked_frame(0xA1, b"40"), 1002),  # RSV2
    (masked_frame(0x81, b"\xff\xfe"), 1007),  # not UTF-8
    (masked_frame(0x81, b"x"), 1002),  # not an Engine.IO packet
    (masked_frame(0x80, b"40"), 1002),  # a continuation outside a message
], ids=["too-large", "unmasked", "rsv2", "not-utf8", "not-engineio", "stray-continuation"])
def test_a_protocol_error_closes_with_its_status(inproc, services, clients, token, frame, code):
    ws = clients(inproc.port)
    assert ws.connect_namespace({"token": token}).startswith("40{")
    sid = next(iter(inproc.eio.sockets))
    if frame is None:  # one byte more than Engine.IO's max_http_buffer_size
        frame = struct.pack("!BBQ", 0x81, 0x80 | 127, int(inproc.eio.max_http_buffer_size) + 1) + os.urandom(4)
    ws.sock.sendall(frame)
    frames = closed_by_server(ws)
    assert frames and frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == code, frames
    assert wait_for(lambda: session_gone(inproc, services, sid), 2)


def test_server_stop_ends_the_owned_websockets(inproc, services, clients, token):
    ws = clients(inproc.port)
    assert ws.connect_namespace({"token": token}).startswith("40{")
    inproc.stop()
    closed_by_server(ws)  # returns at end-of-stream
    assert wait_for(lambda: services.hub.connection_count == 0 and inproc.owner.connections == 0, 2)


# -- frames in ------------------------------------------------------------------------------------

def test_compressed_fragmented_messages_and_websocket_pings_are_read(inproc, clients, token):
    ws = clients(inproc.port, extensions="permessage-deflate; client_max_window_bits")
    # Both directions without context takeover: one frame serves all, and no socket keeps a zlib state.
    assert {"server_no_context_takeover", "client_no_context_takeover"} <= set(ws.deflate["params"])
    ws.open()
    body = deflated("40" + json.dumps({"token": token}))
    half = len(body) // 2
    ws.sock.sendall(masked_frame(0x41, body[:half])  # text, compressed, not final
                    + masked_frame(0x89, b"are you there")  # a ping between the fragments
                    + masked_frame(0x80, body[half:]))  # the final continuation
    opcode, _, payload = ws.recv_frame()
    assert (opcode, payload) == (0xA, b"are you there")
    answer = ws.recv_packet()
    while answer.startswith("42"):
        answer = ws.recv_packet()
    assert answer.startswith("40{"), answer


def test_a_client_cannot_queue_packets_faster_than_they_are_handled(inproc, services, clients, token,
                                                                   monkeypatch):
    ws = clients(inproc.port)
    ws.open()
    authenticate = services.hub._authenticate
    waiting = []

    def slow_authenticate(value):
        concurrency.sleep(0.3)  # the connect is being handled...
        waiting.append(len(next(iter(inproc.owner._by_sid.values())).inbox or ()))
        return authenticate(value)

    monkeypatch.setattr(services.hub, "_authenticate", slow_authenticate)
    ws.send_text("40" + json.dumps({"token": token}))
    time.sleep(0.1)
    for number in range(200):  # ...while these wait in the kernel, not in the server's memory
        ws.send_text(f'42["noise",{number}]')
    answer = ws.recv_packet()
    while answer.startswith("42"):
        answer = ws.recv_packet()
    assert answer.startswith("40{") and waiting == [0], (answer, waiting)
    assert wait_for(lambda: not inproc.owner._by_sid[next(iter(inproc.eio.sockets))].processing, 2)
    services.poller.tick()
    assert ws.vram_updates(1)  # reading went on after the burst


def test_offers_get_no_context_takeover_in_both_directions():
    assert _without_context_takeover("permessage-deflate; client_max_window_bits, x-other") == \
        "permessage-deflate; client_max_window_bits; server_no_context_takeover; " \
        "client_no_context_takeover, x-other"
    assert _without_context_takeover("permessage-deflate; client_no_context_takeover") == \
        "permessage-deflate; client_no_context_takeover; server_no_context_takeover"


# -- frames out -----------------------------------------------------------------------------------

def test_a_stalled_socket_gets_every_frame_in_order_once_it_reads(inproc, services, clients, token):
    ws = clients(inproc.port, rcvbuf=4096)
    assert ws.connect_namespace({"token": token}).startswith("40{")
    blob = "x" * 200_000
    for number in range(40):  # ~8 MB: far more than the kernel buffers for this socket
        services.hub.broadcast("bulk", {"n": number, "blob": blob})
    sid = next(iter(inproc.eio.sockets))
    conn = inproc.owner._by_sid[sid]
    assert conn.pending, "the frames should be waiting for the stalled socket"
    # Pending frames are the shared ones (or a tail of one), never copies per socket.
    assert all(isinstance(chunk, (bytes, memoryview)) for chunk in conn.pending)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    seen = []
    while len(seen) < 40:
        name, payload = ws.next_event()
        if name == "bulk":
            assert payload["blob"] == blob
            seen.append(payload["n"])
    assert seen == list(range(40))
    assert wait_for(lambda: conn.pending is None, 2)


def test_shared_frames_are_built_once_per_variant():
    frames = SharedFrames('42["x",1]')
    assert frames.plain() is frames.plain() == b'\x81\x0942["x",1]'
    assert frames.deflated(15) is frames.deflated(15)
    assert frames.deflated(15)[0] == 0xC1 and frames.for_window(None) is frames.plain()
    assert SharedFrames(b"\x01\x02").plain() == b"\x82\x02\x01\x02"


# -- the HTTP server's side: slots and the address's share ----------------------------------------

def test_owned_websockets_still_count_against_their_address(inproc, clients, token):
    opened = [clients(inproc.port) for _ in range(PER_ADDRESS)]
    for ws in opened:
        assert ws.connect_namespace({"token": token}).startswith("40{")
    assert inproc.owner.connections == PER_ADDRESS

    def health_status() -> int:
        with socket.create_connection(("127.0.0.1", inproc.port), timeout=3) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return int(sock.recv(64).split()[1])

    assert health_status() == 503  # the address holds its share, though no green thread serves them
    opened[0].close()
    assert wait_for(lambda: inproc.owner.connections == PER_ADDRESS - 1, 2)
    assert health_status() == 200


def test_the_request_pool_keeps_a_detached_connections_slot_until_it_is_released():
    pool = server._RequestPool(2, grace_s=0.1)
    counts = {"10.0.0.1": 2}
    stopped = []
    kept = []

    def detached():
        kept.append(pool.keep_slot(lambda: stopped.append(True), counts, "10.0.0.1"))

    pool.spawn(detached)
    pool.spawn(detached)
    concurrency.sleep(0.01)  # both green threads have ended; their slots are kept
    waiting = concurrency.spawn(pool.spawn, lambda: None)
    concurrency.sleep(0.01)
    assert not waiting.dead  # the accept loop would wait here
    kept[0].release()
    kept[0].release()  # once only
    assert counts == {"10.0.0.1": 1}
    concurrency.sleep(0.01)
    assert waiting.dead
    pool.waitall()
    assert stopped == [True]  # the one still detached was ended at stop
    with pytest.raises(RuntimeError):
        pool.keep_slot(lambda: None, counts, "10.0.0.1")  # not from one of its green threads
