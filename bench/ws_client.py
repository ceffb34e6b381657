"""A lean Socket.IO-over-websocket client process holding many connections (bench fan-out).

One process, one epoll loop, raw non-blocking sockets: it speaks just enough of RFC 6455,
Engine.IO 4 and Socket.IO 5 to authenticate (auth={"token": ...}) and receive `vram_update`.
Each message's receipt is stamped twice: when the kernel received its last byte
(SO_TIMESTAMPNS, immune to this process's own scheduling delays on a busy machine) and when this
loop parsed it. The payload's `timestamp` is read from the bytes without parsing the JSON.

    python -m bench.ws_client --port P --token T --count N [--deflate] [--fleet]

prints `READY <connected> <failed>` once connected; then on stdin `report` prints one JSON line
(every sample since the last report) and `quit` closes everything and exits. A sample is
[server timestamp, kernel receipt, parsed at, bytes]; with --fleet, `fleet_update` events are
recorded too (their timestamp is the origin node's reading, in `status`) and every sample ends
with a tag: "vram_update", or "fleet_update:<origin node>".
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import struct
import sys
import time
import zlib

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
EVENT_PREFIX = b'42["vram_update",'
FLEET_PREFIX = b'42["fleet_update",{"node":"'
TIMESTAMP_KEY = b'"timestamp":'
ANC_SIZE = socket.CMSG_SPACE(16)


def mask_frame(payload: bytes, opcode: int = 1) -> bytes:
    """Return a masked client frame (clients must mask, RFC 6455 5.3)."""
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if length < 256 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((key * (length // 4 + 1))[:length], "big")).to_bytes(length, "big")
    return header + key + masked


def parse_timestamp(message: bytes) -> float | None:
    at = message.rfind(TIMESTAMP_KEY)
    if at < 0:
        return None
    start = at + len(TIMESTAMP_KEY)
    end = start
    while end < len(message) and message[end] in b"0123456789.eE+-":
        end += 1
    try:
        return float(message[start:end])
    except ValueError:
        return None


class Connection:
    """One websocket: handshake, Engine.IO open, Socket.IO connect, then events."""

    def __init__(self, client: "Client", index: int):
        self.client = client
        self.index = index
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.state = "connecting"
        self.inflater = None
        self.seen_first = False
        self.received = 0
        self.fragments: list[bytes] = []
        self.outbuf = b""
        self.was_ready = False

    def start(self) -> None:
        self.sock.connect_ex(("127.0.0.1", self.client.port))
        self.client.sel.register(self.sock, selectors.EVENT_WRITE, self)

    def on_writable(self) -> None:
        if self.state == "connecting":
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(f"connect: {os.strerror(err)}")
                return
            key = base64.b64encode(os.urandom(16)).decode()
            ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" \
                if self.client.deflate else ""
            request = (f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{self.client.port}\r\n"
                       f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n{ext}\r\n")
            self.state = "upgrading"
            self.client.sel.modify(self.sock, selectors.EVENT_READ, self)
            self.send(request.encode())
        elif self.outbuf:
            self.send(b"")

    def send(self, data: bytes) -> None:
        data = self.outbuf + data
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(f"send: {exc}")
            return
        self.outbuf = data[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        self.client.sel.modify(self.sock, events, self)

    def on_readable(self) -> None:
        kernel_ts = None
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(262144, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.fail(f"recv: {exc}")
                return
            if not data:
                self.fail("closed by server")
                return
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    kernel_ts = sec + nsec / 1e9
            self.buf += data
            self.process(kernel_ts)
            if self.state == "failed":
                return

    def process(self, kernel_ts: float | None) -> None:
        if self.state == "upgrading":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin1")
            del self.buf[:end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self.fail(f"upgrade refused: {head.splitlines()[0]}")
                return
            if "permessage-deflate" in head.lower():
                self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self.state = "open"
        while self.state not in ("failed", "closed"):
            if len(self.buf) < 2:
                return
            b0, b1 = self.buf[0], self.buf[1]
            length = b1 & 0x7F
            offset = 2
            if length == 126:
                if len(self.buf) < 4:
                    return
                length = struct.unpack_from("!H", self.buf, 2)[0]
                offset = 4
            elif length == 127:
                if len(self.buf) < 10:
                    return
                length = struct.unpack_from("!Q", self.buf, 2)[0]
                offset = 10
            if len(self.buf) < offset + length:
                return
            payload = bytes(self.buf[offset:offset + length])
            del self.buf[:offset + length]
            opcode = b0 & 0x0F
            if b0 & 0x40 and self.inflater is not None:
                payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
            if opcode == 9:
                self.send(mask_frame(payload, 10))
                continue
            if opcode == 8:
                self.state = "closed"
                self.client.on_closed(self, "close frame")
                return
            if opcode == 0 or not b0 & 0x80:
                self.fragments.append(payload)
                if not b0 & 0x80:
                    continue
                payload = b"".join(self.fragments)
                self.fragments = []
            self.on_message(payload, kernel_ts)

    def on_message(self, message: bytes, kernel_ts: float | None) -> None:
        app_ts = time.time()
        if message.startswith(EVENT_PREFIX):
            self.received += 1
            if not self.seen_first:
                self.seen_first = True  # the snapshot sent on connect, not a broadcast
                return
            server_ts = parse_timestamp(message)
            if server_ts is not None:
                self.client.record(server_ts, kernel_ts or app_ts, app_ts, len(message), "vram_update")
        elif self.client.fleet and message.startswith(FLEET_PREFIX):
            end = message.find(b'"', len(FLEET_PREFIX))
            server_ts = parse_timestamp(message)  # the last "timestamp": the origin's status
            if server_ts is not None and end > 0:
                origin = message[len(FLEET_PREFIX):end].decode("ascii", "replace")
                self.client.record(server_ts, kernel_ts or app_ts, app_ts, len(message), f"fleet_update:{origin}")
        elif message == b"2":
            self.send(mask_frame(b"3"))
        elif message.startswith(b"0{"):
            auth = json.dumps({"token": self.client.token}).encode()
            self.send(mask_frame(b"40" + auth))
        elif message.startswith(b"40"):
            self.state = "ready"
            self.was_ready = True
            self.client.on_ready(self)
        elif message.startswith(b"44") or message.startswith(b"41"):
            self.fail(f"refused: {message[:200]!r}")

    def fail(self, why: str) -> None:
        if self.state in ("failed", "closed"):
            return
        self.state = "failed"
        self.client.on_closed(self, why)

    def close(self) -> None:
        try:
            self.client.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


class Client:
    def __init__(self, port: int, token: str, count: int, deflate: bool, in_flight: int, fleet: bool = False):
        self.port = port
        self.fleet = fleet
        self.token = token
        self.count = count
        self.deflate = deflate
        self.in_flight = in_flight
        self.sel = selectors.DefaultSelector()
        self.conns: list[Connection] = []
        self.pending = 0
        self.started = 0
        self.ready = 0
        self.failed: list[str] = []
        self.samples: list[tuple] = []
        self.stdin_buf = b""
        self.running = True

    def record(self, server_ts: float, kernel_ts: float, app_ts: float, size: int, tag: str) -> None:
        self.samples.append((server_ts, kernel_ts, app_ts, size, tag) if self.fleet else
                            (server_ts, kernel_ts, app_ts, size))

    def on_ready(self, conn: Connection) -> None:
        self.ready += 1
        self.pending -= 1
        self.start_more()

    def on_closed(self, conn: Connection, why: str) -> None:
        if len(self.failed) < 20:
            self.failed.append(f"#{conn.index}: {why}")
        else:
            self.failed.append("")
        if not conn.was_ready:
            self.pending -= 1
        conn.close()
        self.start_more()

    def start_more(self) -> None:
        while self.started < self.count and self.pending < self.in_flight:
            conn = Connection(self, self.started)
            self.started += 1
            self.pending += 1
            self.conns.append(conn)
            conn.start()
        if self.started >= self.count and self.pending <= 0 and not getattr(self, "announced", False):
            self.announced = True
            print(f"READY {self.ready} {len(self.failed)}", flush=True)

    def on_stdin(self) -> None:
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            self.running = False
            return
        self.stdin_buf += data
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            command = line.strip().decode()
            if command == "report":
                alive = sum(1 for c in self.conns if c.state == "ready")
                report = {"samples": self.samples, "alive": alive, "ready": self.ready,
                          "failed": len(self.failed), "failures": [f for f in self.failed if f][:5],
                          "received": sum(c.received for c in self.conns)}
                self.samples = []
                sys.stdout.write(json.dumps(report) + "\n")
                sys.stdout.flush()
            elif command == "quit":
                self.running = False

    def run(self) -> None:
        os.set_blocking(sys.stdin.fileno(), False)
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
        self.start_more()
        while self.running:
            for key, events in self.sel.select(timeout=1.0):
                if key.data == "stdin":
                    self.on_stdin()
                    continue
                conn: Connection = key.data
                if events & selectors.EVENT_WRITE:
                    conn.on_writable()
                if events & selectors.EVENT_READ and conn.state not in ("failed", "closed"):
                    conn.on_readable()
        for conn in self.conns:
            if conn.state == "ready":
                try:
                    conn.sock.setblocking(True)
                    conn.sock.sendall(mask_frame(b"41") + mask_frame(b"", 8))
                except OSError:
                    pass
            conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    parser.add_argument("--in-flight", type=int, default=8, help="connections being set up at once")
    parser.add_argument("--fleet", action="store_true", help="also record fleet_update, and tag every sample")
    args = parser.parse_args()
    Client(args.port, args.token, args.count, args.deflate, args.in_flight, args.fleet).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
