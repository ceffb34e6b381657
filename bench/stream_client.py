"""Streaming NDJSON load: N keep-alive connections, each POSTing /api/generate back to back.

    python -m bench.stream_client --url http://127.0.0.1:P/ollama/api/generate --streams 8
        --seconds 1.5 [--token T] [--tokens 200]

Prints one JSON object: requests, lines, lines per second, time to first line of every request
(ms), and any malformed answers. Blocking sockets, one thread per stream: a timestamp is taken
right after the recv that completed the first line, with nothing else queued in front of it.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit



class Stream(threading.Thread):
    def __init__(self, host: str, port: int, path: str, body: bytes, token: str | None,
                 expect_lines: int, start_at: float, stop_at: float):
        super().__init__(daemon=True)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                        f"Accept: application/x-ndjson\r\nContent-Length: {len(body)}\r\n{auth}\r\n").encode() + body
        self.addr = (host, port)
        self.expect_lines = expect_lines
        self.start_at = start_at
        self.stop_at = stop_at
        self.ttfl_ms: list[float] = []
        self.lines = 0
        self.requests = 0
        self.errors: list[str] = []
        self.last_end = start_at

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def run(self) -> None:
        sock = self.connect()
        while time.monotonic() < self.start_at:
            time.sleep(0.001)
        try:
            while time.monotonic() < self.stop_at:
                if not self.one(sock):
                    sock.close()
                    sock = self.connect()
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            sock.close()

    def one(self, sock: socket.socket) -> bool:
        """Send one request and read its streamed answer; False when the connection must be redone."""
        t0 = time.perf_counter()
        sock.sendall(self.request)
        buf = b""
        head = None
        lines = 0
        first = None
        chunk_left = -1          # bytes of chunk data still to come; -1: a size line is next
        while True:
            data = sock.recv(65536)
            if not data:
                self.errors.append("connection closed mid-answer")
                return False
            buf += data
            if head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = buf[:end].decode("latin1")
                buf = buf[end + 4:]
                if not head.startswith("HTTP/1.1 200"):
                    self.errors.append(head.splitlines()[0])
                    return False
                if "chunked" not in head.lower():
                    self.errors.append("answer not chunked")
                    return False
            done = False
            while buf:
                if chunk_left > 0:
                    piece = buf[:chunk_left]
                    found = piece.count(b"\n")
                    if found and first is None:
                        first = time.perf_counter()
                    lines += found
                    chunk_left -= len(piece)
                    buf = buf[len(piece):]
                    continue
                if chunk_left == 0:          # the CRLF after a chunk's data
                    if len(buf) < 2:
                        break
                    buf = buf[2:]
                    chunk_left = -1
                    continue
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(buf[:end].split(b";")[0], 16)
                buf = buf[end + 2:]
                if size == 0:
                    done = True  # the final CRLF (no trailers) follows; nothing else does
                    break
                chunk_left = size
            if done:
                while len(buf) < 2:  # the CRLF that ends the chunked body (no trailers are sent)
                    more = sock.recv(64)
                    if not more:
                        return False
                    buf += more
                break
        self.requests += 1
        self.lines += lines
        self.ttfl_ms.append((first - t0) * 1000 if first is not None else float("nan"))
        self.last_end = time.monotonic()
        if lines != self.expect_lines:
            self.errors.append(f"expected {self.expect_lines} lines, got {lines}")
        return "connection: close" not in head.lower()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--token")
    parser.add_argument("--tokens", type=int, default=200, help="tokens the fake streams per answer")
    parser.add_argument("--model", default="llama3.2")
    args = parser.parse_args()
    url = urlsplit(args.url)
    body = json.dumps({"model": args.model, "prompt": "Why is the sky blue?"}).encode()
    start_at = time.monotonic() + 0.3  # every stream connected before the clock starts
    stop_at = start_at + args.seconds
    streams = [Stream(url.hostname, url.port, url.path, body, args.token, args.tokens + 1, start_at, stop_at)
               for _ in range(args.streams)]
    for stream in streams:
        stream.start()
    for stream in streams:
        stream.join(args.seconds + 60)
    elapsed = max(s.last_end for s in streams) - start_at
    lines = sum(s.lines for s in streams)
    print(json.dumps({
        "streams": args.streams, "requests": sum(s.requests for s in streams), "lines": lines,
        "seconds": elapsed, "lines_per_s": lines / elapsed if elapsed > 0 else 0.0,
        "ttfl_ms": [t for s in streams for t in s.ttfl_ms],
        "errors": [e for s in streams for e in s.errors][:10],
        "error_count": sum(len(s.errors) for s in streams),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
