"""A fake model registry: HTTPS on 127.0.0.1 with a self-signed certificate, serving files from a folder.

    python -m tests.fakes.fake_registry --root DIR --cert C --key K --log LOG   # prints "PORT <n>"

A request for /v2/... answers DIR/v2/... (404 if missing), honouring `Range: bytes=a-b` with 206.
Beside a file, `<file>.redirect` (answer 307 to its content instead), `<file>.status` (answer
that status) and `<file>.norange` (ignore Range, send everything) steer it. Every request is
logged as one JSON line (method, path, headers) to LOG. As Go's server, TCP_NODELAY is set.
The `FakeRegistry` controller (test side) writes the folder, makes the certificate with openssl
and starts the process.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    log_path: Path
    log_lock = threading.Lock()

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        with self.log_lock, open(self.log_path, "a") as log:
            log.write(json.dumps({"method": "GET", "path": self.path, "headers": dict(self.headers)}) + "\n")
        path = (self.root / self.path.lstrip("/")).resolve()
        if self.root.resolve() not in path.parents:
            return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
        redirect = path.with_name(path.name + ".redirect")
        if redirect.exists():
            self.send_response(307)
            self.send_header("Location", redirect.read_text().strip())
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        status_file = path.with_name(path.name + ".status")
        if status_file.exists():
            return self._send(int(status_file.read_text()), b'{"errors":[{"code":"DENIED"}]}')
        if not path.is_file():
            return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
        data = path.read_bytes()
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        if match and not path.with_name(path.name + ".norange").exists():
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self._send(416, b"")
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            body = data[start:end + 1]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client read what it wanted and left
        return None

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    Handler.root = Path(args.root)
    Handler.log_path = Path(args.log)
    server = _Server(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- the controller tests use ------------------------------------------------------------------

def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 (openssl); return (cert, key)."""
    cert, key = directory / "registry-cert.pem", directory / "registry-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class FakeRegistry:
    """Start and fill a fake registry; `host` ("127.0.0.1:<port>") is its registry part of a name."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.root = self.dir / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "requests.log"
        self.log_path.touch()
        self.cert, self.key = make_certificate(self.dir)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "FakeRegistry":
        repo = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_registry", "--root", str(self.root),
                                      "--cert", str(self.cert), "--key", str(self.key), "--log", str(self.log_path)],
                                     cwd=repo, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"fake registry did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def put(self, path: str, data: bytes) -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def add_model(self, namespace: str, model: str, tag: str, gguf_bytes: bytes,
                  other_layers: tuple[int, ...] = (1234, 567)) -> dict[str, Any]:
        """Serve a manifest with a model layer (`gguf_bytes`) and small other layers; return it."""
        digest = "sha256:" + hashlib.sha256(gguf_bytes).hexdigest()
        layers = [{"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": len(gguf_bytes)}]
        for i, size in enumerate(other_layers):
            layers.append({"mediaType": "application/vnd.ollama.image.template",
                           "digest": "sha256:" + hashlib.sha256(f"{model}{i}".encode()).hexdigest(), "size": size})
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": "sha256:" + "0" * 64, "size": 485},
                    "layers": layers}
        self.put(f"v2/{namespace}/{model}/manifests/{tag}", json.dumps(manifest).encode())
        self.put(f"v2/{namespace}/{model}/blobs/{digest}", gguf_bytes)
        return manifest

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
