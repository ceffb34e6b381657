"""The broadcast fan-out (sockets/broadcast.py) against `python app.py`, over loopback.

Every broadcast is encoded once and written as one pre-built frame to each websocket (deflated
once for permessage-deflate clients), which the websocket owner (sockets/owner.py) serves from one
loop instead of green threads of their own; long-polling sockets go through python-socketio's
queue. These tests check from the outside that every kind of client still gets complete, correct,
in-order Socket.IO events, that a client that stops reading holds nobody up and later gets intact
frames in order, and that a socket without a valid session gets nothing. The raw clients speak RFC 6455 / RFC 7692, Engine.IO v4 and Socket.IO v5 by hand, so
they see the exact bytes the server writes.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import signal
import socket
import statistics
import struct
import time
import zlib
from pathlib import Path

import pytest
import requests
import socketio
from engineio.async_drivers.eventlet import WebSocketWSGI as EngineIoWebSocket

from tests.fakes.fake_nvml import FakeNvml, FakeProcess, eight_gpus_fifty_processes
from tests.live import start_server, wait_for

INTERVAL = 0.2
STALL_S = 2.0  # how long the slow client stops reading
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: appended before inflating a message


# -- a raw Socket.IO-over-websocket client -------------------------------------------------------

class Closed(Exception):
    """The server closed the websocket (close frame or EOF)."""


class RawClient:
    """One websocket to /socket.io/ (EIO=4), framed and (de)compressed by hand."""

    def __init__(self, port: int, *, extensions: str | None = None, rcvbuf: int | None = None,
                 timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect: the window (and its scale) is fixed at the handshake.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self._buf = bytearray()
        self.compressed = 0
        self.uncompressed = 0
        self.early: list[str] = []  # events that came before the namespace's connect answer
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /socket.io/?EIO=4&transport=websocket HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if extensions:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_head()
        status, *header_lines = head.split("\r\n")
        assert status.startswith("HTTP/1.1 101"), head
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        assert self.headers.get("sec-websocket-accept") == accept, head
        self.deflate = _parse_deflate(self.headers.get("sec-websocket-extensions"))

    # -- bytes and frames

    def _read_head(self) -> str:
        while b"\r\n\r\n" not in self._buf:
            self._fill(4096)
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)
        return head.decode("latin-1")

    def _fill(self, want: int) -> None:
        chunk = self.sock.recv(max(want, 65536))
        if not chunk:
            raise Closed("EOF")
        self._buf += chunk

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill(n - len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv_frame(self) -> tuple[int, bool, bytes]:
        """Return (opcode, rsv1, payload) of one whole server frame."""
        first, second = self._exact(2)
        fin, rsv1, rsv23, opcode = first & 0x80, bool(first & 0x40), first & 0x30, first & 0x0F
        assert fin, f"fragmented frame: {first:#x}"  # neither path fragments
        assert not rsv23, f"RSV2/RSV3 set: {first:#x}"
        assert not rsv1 or (self.deflate is not None and opcode in (1, 2)), f"unexpected RSV1: {first:#x}"
        assert not second & 0x80, "server frames are never masked"
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exact(8))[0]
        return opcode, rsv1, self._exact(length)

    def recv_text(self) -> str:
        """Return the next text message; answer websocket pings; raise Closed on a close frame."""
        while True:
            opcode, rsv1, payload = self.recv_frame()
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                raise Closed(payload)
            assert opcode == 0x1, f"expected a text frame, got opcode {opcode}"
            if rsv1:
                # server_no_context_takeover: every message must inflate with a FRESH decompressor.
                inflater = zlib.decompressobj(-self.deflate["server_max_window_bits"])
                payload = inflater.decompress(payload + DEFLATE_TAIL)
                assert not inflater.unconsumed_tail and not inflater.unused_data
                self.compressed += 1
            else:
                self.uncompressed += 1
            return payload.decode("utf-8")

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    # -- Engine.IO / Socket.IO

    def recv_packet(self) -> str:
        """Return the next Engine.IO packet other than a ping (which is answered)."""
        while True:
            text = self.recv_text()
            if text == "2":
                self.send_text("3")
                continue
            return text

    def open(self) -> dict:
        packet = self.recv_packet()
        assert packet.startswith("0{"), packet
        handshake = json.loads(packet[1:])
        assert handshake["sid"] and handshake["upgrades"] == []
        return handshake

    def connect_namespace(self, auth) -> str:
        """Engine.IO open, then `40` (with auth); return the server's answer (`40...` or `44...`).

        python-socketio sends what the connect handler emits (the latest vram_update) before its
        `40` answer; those events are kept for next_event(), as socket.io-client buffers them.
        """
        self.open()
        self.send_text("40" + ("" if auth is None else json.dumps(auth)))
        while True:
            packet = self.recv_packet()
            if not packet.startswith("42"):
                return packet
            self.early.append(packet)

    def next_event(self) -> tuple[str, object]:
        while True:
            packet = self.early.pop(0) if self.early else self.recv_packet()
            assert packet.startswith("4"), f"not a message packet: {packet[:80]!r}"
            if packet.startswith("42"):
                name, *args = json.loads(packet[2:])
                return name, args[0] if args else None

    def vram_updates(self, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        updates = []
        while len(updates) < count:
            assert time.monotonic() < deadline, f"only {len(updates)} vram_update events in {timeout}s"
            name, payload = self.next_event()
            if name == "vram_update":
                updates.append(payload)
        return updates

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _parse_deflate(header: str | None) -> dict | None:
    if not header:
        return None
    for extension in header.split(","):
        name, *params = [p.strip() for p in extension.split(";")]
        if name.lower() != "permessage-deflate":
            continue
        options = {"params": [p.lower() for p in params], "server_max_window_bits": 15}
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "server_max_window_bits" and value:
                options["server_max_window_bits"] = int(value.strip().strip('"'))
        return options
    return None


# -- servers and Socket.IO clients ---------------------------------------------------------------

def _launch(tmp_path: Path, lib: Path, scenario) -> object:
    fake = FakeNvml(tmp_path / "scenario.txt", lib_path=lib)
    fake.apply(scenario)
    return start_server(tmp_path, nvml_lib_dir=lib.parent, nvml_scenario=fake.scenario_path,
                        extra={"VRAM_POLL_INTERVAL_SECONDS": str(INTERVAL)})


@pytest.fixture(scope="module")
def server(fake_nvml_lib, tmp_path_factory):
    """One server for the tests that only read: 8 GPUs x 50 processes (~35 KB a frame)."""
    live = _launch(tmp_path_factory.mktemp("broadcast"), fake_nvml_lib, eight_gpus_fifty_processes())
    yield live
    live.stop(signal.SIGKILL)


@pytest.fixture
def raw_clients():
    clients = []

    def _open(port, **kwargs):
        client = RawClient(port, **kwargs)
        clients.append(client)
        return client

    yield _open
    for client in clients:
        client.close()


@pytest.fixture
def sio_clients():
    clients = []

    def _connect(live, transport, events):
        # Frames of a megabyte: websocket-client's pure-Python UTF-8 check would take ~1 s each.
        client = socketio.Client(reconnection=False,
                                 websocket_extra_options={"skip_utf8_validation": True})

        @client.on("vram_update")
        def on_update(data):
            events.append((time.monotonic(), data))

        client.connect(live.url, auth={"token": live.login()}, transports=[transport], wait_timeout=5)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.disconnect()


def rest_status(live) -> dict:
    response = requests.get(f"{live.url}/api/vram/status", headers=live.headers(), timeout=5)
    assert response.status_code == 200
    return response.json()


def assert_same_shape(update: dict, rest: dict) -> None:
    """A vram_update carries what /api/vram/status returns (and its node): same keys, GPUs, processes."""
    assert update.keys() == rest.keys() | {"node"} and isinstance(update["node"], str)
    assert isinstance(update["timestamp"], float)
    assert update["driver_version"] == rest["driver_version"]
    assert [gpu.keys() for gpu in update["gpus"]] == [gpu.keys() for gpu in rest["gpus"]]
    assert [(g["index"], g["name"], g["uuid"], g["total_mb"]) for g in update["gpus"]] == \
        [(g["index"], g["name"], g["uuid"], g["total_mb"]) for g in rest["gpus"]]
    assert update["gpu"] == update["gpus"][0]
    assert [p.keys() for p in update["processes"]] == [p.keys() for p in rest["processes"]]
    assert sorted((p["pid"], p["gpu_index"], p["name"]) for p in update["processes"]) == \
        sorted((p["pid"], p["gpu_index"], p["name"]) for p in rest["processes"])


def assert_increasing(timestamps: list[float]) -> None:
    assert all(a < b for a, b in zip(timestamps, timestamps[1:])), timestamps


# -- 1. a plain websocket client -----------------------------------------------------------------

@pytest.mark.live
def test_websocket_client_gets_the_status_body_at_every_poll(server, sio_clients):
    events = []
    sio_clients(server, "websocket", events)
    assert wait_for(lambda: len(events) >= 7)
    rest = rest_status(server)
    updates = [data for _, data in events]
    assert len(rest["processes"]) == 400 and len(rest["gpus"]) == 8
    for update in updates:
        assert_same_shape(update, rest)
    assert_increasing([u["timestamp"] for u in updates])
    # The reading the REST route serves went out as an event too, equal to the body field by field.
    same = lambda: [u for _, u in events if u["timestamp"] == rest["timestamp"]]  # noqa: E731
    assert wait_for(same, timeout=2)
    assert [{k: v for k, v in u.items() if k != "node"} for u in same()] == [rest]
    gaps = [b[0] - a[0] for a, b in zip(events[1:], events[2:])]
    assert 0.7 * INTERVAL < statistics.median(gaps) < 1.3 * INTERVAL, gaps


# -- 2. a permessage-deflate client --------------------------------------------------------------

@pytest.mark.live
@pytest.mark.parametrize("offer, window", [
    ("permessage-deflate; client_max_window_bits", 15),
    # A smaller window is negotiated and each message inflates with it (these payloads repeat
    # within 1 KB, so this does not prove the compressor's window; context takeover would fail).
    ("permessage-deflate; server_max_window_bits=10; client_max_window_bits", 10),
])
def test_deflate_client_gets_each_message_compressed_without_context(server, raw_clients, offer, window):
    client = raw_clients(server.port, extensions=offer)
    assert client.deflate is not None, client.headers
    # The server adds server_no_context_takeover to the offer, so one deflated frame fits all.
    assert "server_no_context_takeover" in client.deflate["params"], client.headers
    assert client.deflate["server_max_window_bits"] == window
    answer = client.connect_namespace({"token": server.login()})
    assert answer.startswith("40{") and json.loads(answer[2:])["sid"]
    updates = client.vram_updates(6)  # the one sent on connect, then 5 broadcasts
    rest = rest_status(server)
    for update in updates:
        assert_same_shape(update, rest)
    assert_increasing([u["timestamp"] for u in updates])
    # Every message (open, connect, each event) came deflated, and each inflated on its own.
    assert client.uncompressed == 0 and client.compressed >= 8


# -- 3. long-polling beside websocket ------------------------------------------------------------

@pytest.mark.live
def test_polling_and_websocket_clients_both_get_every_update(server, sio_clients):
    polled, pushed = [], []
    poller = sio_clients(server, "polling", polled)
    sio_clients(server, "websocket", pushed)
    assert poller.transport() == "polling"
    assert wait_for(lambda: len(polled) >= 7 and len(pushed) >= 7)
    rest = rest_status(server)
    for _, update in polled + pushed:
        assert_same_shape(update, rest)
    a = [u["timestamp"] for _, u in polled]
    b = [u["timestamp"] for _, u in pushed]
    assert_increasing(a)
    assert_increasing(b)
    # Same broadcasts, none lost, none twice, over the span both were connected.
    low, high = max(a[0], b[0]), min(a[-1], b[-1])
    assert [t for t in a if low <= t <= high] == [t for t in b if low <= t <= high]
    assert len([t for t in a if low <= t <= high]) >= 4


# -- 4. a client that stops reading --------------------------------------------------------------

def _long_names_scenario():
    """8 GPUs x 400 processes with long command lines: ~0.8 MB a frame, ~4 MB/s at 0.2 s."""
    base = eight_gpus_fifty_processes()
    processes = tuple(
        FakeProcess(pid=10000 + gpu * 1000 + n, name=f"python3-worker-{gpu}-{n}-" + "a" * 180, gpu=gpu,
                    used_bytes=100 * 1024 * 1024, kind="compute")
        for gpu in range(8) for n in range(400))
    return dataclasses.replace(base, processes=processes)


def _tcp_wmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


@pytest.fixture
def big_server(fake_nvml_lib, tmp_path):
    live = _launch(tmp_path, fake_nvml_lib, _long_names_scenario())
    yield live
    live.stop(signal.SIGKILL)


@pytest.mark.live
def test_slow_client_holds_nobody_up_and_gets_intact_frames_in_order(big_server, sio_clients, raw_clients):
    normal = []
    sio_clients(big_server, "websocket", normal)
    assert wait_for(lambda: len(normal) >= 2)
    frame_bytes = len(json.dumps(normal[-1][1], separators=(",", ":")))

    # The stall must broadcast well over what the kernel can buffer for the stalled socket.
    if STALL_S / INTERVAL * frame_bytes < 1.5 * _tcp_wmem_max():
        pytest.skip(f"{frame_bytes}-byte frames cannot fill a {_tcp_wmem_max()}-byte send buffer")

    slow = raw_clients(big_server.port, rcvbuf=4096)
    answer = slow.connect_namespace({"token": big_server.login()})
    assert answer.startswith("40{"), answer
    # Stop reading. The server's send buffer (up to tcp_wmem max) and our 4 KB fill up; from then
    # on each broadcast leaves a partial write or waits in the socket's queue.
    stall_start = time.monotonic()
    time.sleep(STALL_S)
    stall_end = time.monotonic()
    during = [(t, u) for t, u in normal if stall_start <= t <= stall_end]
    gaps = [b[0] - a[0] for a, b in zip(during, during[1:])]
    assert len(during) >= 0.7 * STALL_S / INTERVAL, f"{len(during)} updates in {STALL_S} s of stall"
    assert len(during) * frame_bytes > _tcp_wmem_max()  # so the stalled socket did fill up
    assert 0.7 * INTERVAL < statistics.median(gaps) < 1.3 * INTERVAL, gaps
    assert max(gaps) < 3 * INTERVAL, gaps

    # Resume (with a bigger window: catching up on ~10 MB through 4 KB reads is slow).
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    caught_up_to = normal[-1][1]["timestamp"]
    got = []
    deadline = time.monotonic() + 10
    while not got or got[-1]["timestamp"] < caught_up_to:
        assert time.monotonic() < deadline, f"slow client caught up to only {len(got)} updates"
        name, payload = slow.next_event()
        assert name == "vram_update", name
        got.append(payload)
    ours = [u["timestamp"] for u in got]
    assert_increasing(ours)
    expected_pids = {p.pid for p in _long_names_scenario().processes}
    for update in got:
        assert len(update["gpus"]) == 8
        assert {p["pid"] for p in update["processes"]} == expected_pids
    # Exactly the broadcasts the normal client saw over the same span: nothing lost or repeated.
    theirs = [u["timestamp"] for _, u in normal]
    assert_increasing(theirs)
    assert [t for t in theirs if ours[0] <= t <= ours[-1]] == ours
    assert len(ours) >= len(during)


# -- 5. no session, no updates -------------------------------------------------------------------

@pytest.mark.live
@pytest.mark.parametrize("auth", [None, {}, {"token": "forged-token"}])
def test_unauthenticated_websocket_never_gets_vram_update(server, raw_clients, auth):
    witness = raw_clients(server.port)
    assert witness.connect_namespace({"token": server.login()}).startswith("40{")
    intruder = raw_clients(server.port)
    answer = intruder.connect_namespace(auth)
    intruder.sock.settimeout(0.2)
    assert answer.startswith("44{"), answer
    assert json.loads(answer[2:])["message"].startswith("unauthorized")  # what app.js looks for
    assert intruder.early == []
    started = time.monotonic()
    packets = []
    while time.monotonic() - started < 5 * INTERVAL:
        try:
            packets.append(intruder.recv_packet())
        except (socket.timeout, TimeoutError):
            continue
        except Closed:
            break
    assert not [p for p in packets if p.startswith("42")], packets
    # Meanwhile an authenticated socket on the same server got the broadcasts it missed.
    witness.sock.settimeout(2)
    updates = witness.vram_updates(4, timeout=3)
    assert [u for u in updates if u["timestamp"] >= time.time() - 5 * INTERVAL - 1]


# -- the adapter's probes and its fallback (in-process; its own tests: tests/test_owned_websockets.py) ------------------------------------------

def test_the_direct_path_probes_the_pinned_libraries_and_is_on(services):
    writer = services.socketio.server.manager.writer
    assert writer.enabled and writer.disabled_reason is None and writer.stats["surprises"] == 0


@pytest.mark.parametrize("eio", [
    type("ThreadingEio", (), {"async_mode": "threading", "_async": {"websocket": object}})(),
    type("NoDrivers", (), {"async_mode": "eventlet"})(),
    type("OtherWebsocket", (), {"async_mode": "eventlet", "_async": {"websocket": dict}})(),
    type("NoThreadClass", (), {"async_mode": "eventlet",
                               "_async": {"websocket": EngineIoWebSocket, "thread": object}})(),
])
def test_an_unexpected_library_shape_turns_the_direct_path_off(eio, caplog):
    from sockets.owner import WebsocketOwner

    writer = WebsocketOwner()
    assert writer.install(type("Sio", (), {"eio": eio, "environ": {}})()) is False
    assert not writer.enabled and writer.stats["surprises"] == 1
    assert "websocket owner off" in caplog.text


def test_a_surprise_on_a_live_socket_falls_back_to_the_stock_emit_and_keeps_vram_update(
        app, client, auth, services, caplog):
    """A socket object without the fields the owner reads: logged once, off for good, events still flow."""
    writer = services.socketio.server.manager.writer
    token = auth.headers()["Authorization"].split()[1]
    listener = services.socketio.test_client(app, flask_test_client=client, auth={"token": token})
    listener.get_received()
    owner = type("Owner", (), {"sid": "x", "closed": False})()  # no queue, upgraded, upgrading...
    ws = type("Ws", (), {"version": 13})()
    assert writer._why_not(owner, ws, detach=lambda on_stop: None) is not None
    assert not writer.enabled and writer.stats["surprises"] == 1
    assert caplog.text.count("websocket owner off") == 1
    services.poller.tick()
    services.poller.tick()
    received = [e for e in listener.get_received() if e["name"] == "vram_update"]
    assert len(received) == 2 and received[-1]["args"][0]["gpus"]
    assert caplog.text.count("websocket owner off") == 1
