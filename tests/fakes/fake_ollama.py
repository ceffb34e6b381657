"""A fake Ollama: a real HTTP/1.1 server on 127.0.0.1 speaking Ollama's wire protocol.

Run it as its own process so it is independent of the test process's eventlet hub:

    python -m tests.fakes.fake_ollama --port 0      # prints "PORT <n>" on stdout, then serves

Tests drive it over HTTP on reserved paths (the `FakeOllama` controller below wraps them):

    POST /_fake/reset                 defaults back, recorded requests cleared
    POST /_fake/models                {"models": [...]} downloaded models (see `_model_record`: "blob"
                                      and "model_info" shape /api/show)
    POST /_fake/loaded                {"models": [{"name", "size_vram"?, "expires_at"?}]}
    POST /_fake/behaviour             merge behaviour keys (see DEFAULT_BEHAVIOUR)
    GET  /_fake/state                 models, loaded, behaviour, cancelled pulls, aborted loads
    GET  /_fake/requests              every recorded request (method, path, headers, body, disconnected)
    GET  /_fake/counts                {"POST /api/pull": 2, ...}

Like Ollama (Go's net/http), every accepted socket gets TCP_NODELAY, streams use chunked
Transfer-Encoding and each NDJSON line is flushed as its own chunk.
"""
from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import select
import socket
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

VERSION = "0.6.8"

DEFAULT_BEHAVIOUR: dict[str, Any] = {
    "version": VERSION,
    # {"/api/tags": 2.0, "*": 0.1}: seconds to wait before answering a path ("*" = every path).
    "delay_s": {},
    # {"/api/tags": {"status": 500, "error": "boom"}}: answer a path with this error.
    "fail": {},
    # {"/api/tags": "http://elsewhere/x"}: answer a path with 307 and this Location.
    "redirect": {},
    # Seconds a load (/api/generate with no prompt) takes; a client leaving aborts it.
    "load_delay_s": 0.0,
    # Tokens per generate/chat/completion answer and seconds between two of them.
    "tokens": 5,
    "token_interval_s": 0.0,
    # Pull: layer sizes in bytes, progress lines per layer, seconds between lines, and failures.
    "pull": {
        "layers": [2_000_000_000, 12_000, 500],
        "lines_per_layer": 5,
        "line_interval_s": 0.0,
        "rollback_after_lines": None,   # after N progress lines, one line with `completed` rolled back
        "die_after_lines": None,        # after N lines, close the socket without finishing the body
        "exit_after_lines": None,       # after N lines, the whole fake process exits (Ollama dies)
        "error_after_lines": None,      # after N lines, an {"error": ...} line (HTTP 200)
        "error": "max retries exceeded: unexpected EOF",
        "hang_after_lines": None,       # after N lines, send nothing more until the client leaves
    },
    # Names whose pull fails like an unknown model (pulling manifest, then an error line).
    "pull_missing": ["does-not-exist"],
}

DEFAULT_MODELS: list[dict[str, Any]] = [
    {"name": "llama3.2:latest", "size": 2019393189, "family": "llama", "parameter_size": "3.2B",
     "quantization_level": "Q4_K_M", "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"},
    {"name": "qwen2.5-coder:7b", "size": 4683087332, "family": "qwen2", "parameter_size": "7.6B",
     "quantization_level": "Q4_K_M", "digest": "2b0496514337a3d5901f1d253d01726c890b721e891335a56d6e08cedf3e2cb0"},
    {"name": "all-minilm:latest", "size": 45960996, "family": "bert", "parameter_size": "23M",
     "quantization_level": "F16", "digest": "1b226e2802dbb772b5fc32a58f103ca1804ef7501331012de126ab22f67475ef"},
]

FAR_FUTURE = "2318-08-26T02:02:25.402233227+02:00"  # what Ollama reports for keep_alive < 0


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat()


def full_name(name: str) -> str:
    """Return the key Ollama would match a name by: default host/namespace dropped, default tag
    (`latest`) added, lower-cased (`registry.ollama.ai/library/llama3` == `llama3:latest`)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0].lower() == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == "library":
        parts = parts[1:]
    name = "/".join(parts)
    last = parts[-1]
    return (name if ":" in last else name + ":latest").lower()


def _digest_for(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _model_record(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill a partial model spec into /api/tags's shape (plus size_vram used when loaded)."""
    name = spec["name"]
    name = name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
    family = spec.get("family", "llama")
    return {
        "name": name,
        "model": name,
        "modified_at": spec.get("modified_at", "2025-01-15T10:20:30.123456789+01:00"),
        "size": int(spec.get("size", 1_000_000_000)),
        "digest": spec.get("digest", _digest_for(name)),
        "details": {
            "parent_model": "",
            "format": spec.get("format", "gguf"),
            "family": family,
            "families": spec.get("families", [family]),
            "parameter_size": spec.get("parameter_size", "1B"),
            "quantization_level": spec.get("quantization_level", "Q4_K_M"),
        },
        "_size_vram": spec.get("size_vram"),
        # /api/show: the blob its modelfile's FROM line names (several tags may share one), and
        # model_info (None: a small llama-shaped default; a test may give any dict).
        "_blob": spec.get("blob", "sha256:" + _digest_for("blob:" + name)),
        "_model_info": spec.get("model_info"),
    }


class State:
    """Everything the fake remembers, behind one lock (handler threads share it)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        for spec in DEFAULT_MODELS:
            record = _model_record(spec)
            self.models[full_name(record["name"])] = record
        self.loaded: dict[str, dict[str, Any]] = {}
        self.behaviour: dict[str, Any] = copy.deepcopy(DEFAULT_BEHAVIOUR)
        self.requests: list[dict[str, Any]] = []
        self.cancelled_pulls: list[str] = []
        self.aborted_loads: list[str] = []
        self.active_pulls: dict[str, int] = {}

    def merge_behaviour(self, update: dict[str, Any]) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(self.behaviour.get(key), dict) and key == "pull":
                self.behaviour[key].update(value)
            else:
                self.behaviour[key] = value


STATE = State()


class FakeOllamaServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOllama/" + VERSION
    sys_version = ""

    def setup(self) -> None:
        # As Go does on every accepted TCP connection: without it Nagle + delayed ACK add ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if os.environ.get("FAKE_OLLAMA_LOG"):
            super().log_message(format, *args)

    # -- plumbing ------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def do_OPTIONS(self):
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        self.body = self._read_body()
        if path.startswith("/_fake/"):
            self._control(path)
            return
        self.record = {
            "method": self.command, "path": path, "query": split.query,
            "headers": {k: v for k, v in self.headers.items()},
            "body": self.body.decode("utf-8", errors="replace"),
            "body_b64": base64.b64encode(self.body).decode(),
            "disconnected": False, "started_at": time.time(), "finished_at": None, "status": None,
        }
        with STATE.lock:
            STATE.requests.append(self.record)
            behaviour = copy.deepcopy(STATE.behaviour)
        self.behaviour = behaviour
        try:
            delay = behaviour["delay_s"].get(path, behaviour["delay_s"].get("*", 0))
            if delay and not self._sleep(float(delay)):
                return
            location = behaviour["redirect"].get(path)
            if location:
                self.record["status"] = 307
                self.send_response(307)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            fail = behaviour["fail"].get(path)
            if fail:
                self._send_json(int(fail.get("status", 500)), {"error": fail.get("error", "internal error")})
                return
            route = ROUTES.get((self.command if self.command != "HEAD" else "GET", path))
            if route is None and path.startswith("/v1/models/") and self.command == "GET":
                route = Handler.v1_model
            if route is None:
                self._send_text(404, "404 page not found")
                return
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            self._mark_disconnected()
        finally:
            self.record["finished_at"] = time.time()

    def _body_and_model(self, *, openai: bool = False):
        """Read the JSON body and the model it names; None once an error answer has been sent."""
        body = self._json_body()
        if body is None:
            return None
        record = (self._openai_model_or_404 if openai else self._model_or_404)(body)
        return None if record is None else (body, record)

    def _json_body(self) -> dict[str, Any] | None:
        try:
            body = json.loads(self.body or b"{}")
        except ValueError:
            self._send_json(400, {"error": "invalid character in request body"})
            return None
        if not isinstance(body, dict):
            self._send_json(400, {"error": "json: cannot unmarshal array into Go value"})
            return None
        return body

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.record["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _start_stream(self, content_type: str = "application/x-ndjson", status: int = 200) -> None:
        self.record["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> bool:
        """Send one chunk; return False (and record it) when the client has gone."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._mark_disconnected()
            return False

    def _line(self, obj: Any) -> bool:
        return self._chunk(json.dumps(obj).encode() + b"\n")

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self._mark_disconnected()

    def _die(self) -> None:
        """Close the socket without finishing the chunked body (Ollama's process died)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    def _sleep(self, seconds: float) -> bool:
        """Sleep, watching the client; return False (and record it) if the client left."""
        deadline = time.monotonic() + seconds
        while True:
            if self._client_gone():
                self._mark_disconnected()
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.01))

    def _mark_disconnected(self) -> None:
        self.record["disconnected"] = True
        self.close_connection = True

    # -- control -------------------------------------------------------------------------------

    def _control(self, path: str) -> None:
        body = json.loads(self.body or b"{}") if self.body else {}
        with STATE.lock:
            if path == "/_fake/reset":
                STATE.reset()
                answer: Any = {"ok": True}
            elif path == "/_fake/models":
                STATE.models = {}
                for spec in body.get("models", []):
                    record = _model_record(spec)
                    STATE.models[full_name(record["name"])] = record
                answer = {"ok": True}
            elif path == "/_fake/loaded":
                STATE.loaded = {}
                for spec in body.get("models", []):
                    key = full_name(spec["name"])
                    STATE.loaded[key] = {"size_vram": spec.get("size_vram"),
                                         "expires_at": spec.get("expires_at", FAR_FUTURE)}
                answer = {"ok": True}
            elif path == "/_fake/behaviour":
                STATE.merge_behaviour(body)
                answer = {"ok": True, "behaviour": STATE.behaviour}
            elif path == "/_fake/state":
                answer = {"models": [_public(m) for m in STATE.models.values()], "loaded": sorted(STATE.loaded),
                          "behaviour": STATE.behaviour, "cancelled_pulls": STATE.cancelled_pulls,
                          "aborted_loads": STATE.aborted_loads, "active_pulls": STATE.active_pulls}
            elif path == "/_fake/requests":
                answer = {"requests": STATE.requests}
            elif path == "/_fake/counts":
                counts: dict[str, int] = {}
                for record in STATE.requests:
                    key = f"{record['method']} {record['path']}"
                    counts[key] = counts.get(key, 0) + 1
                answer = {"counts": counts}
            else:
                answer = None
        if answer is None:
            self.record = {}
            self._send_json(404, {"error": f"unknown control path {path}"})
        else:
            self.record = {}
            self._send_json(200, answer)

    # -- Ollama's API --------------------------------------------------------------------------

    def root(self):
        self._send_text(200, "Ollama is running")

    def version(self):
        self._send_json(200, {"version": self.behaviour["version"]})

    def tags(self):
        with STATE.lock:
            models = [_public(m) for m in STATE.models.values()]
        self._send_json(200, {"models": models})

    def ps(self):
        with STATE.lock:
            models = []
            for key, info in STATE.loaded.items():
                record = STATE.models.get(key)
                if record is None:
                    continue
                size_vram = info["size_vram"] if info["size_vram"] is not None else record["_size_vram"]
                entry = {k: v for k, v in _public(record).items() if k != "modified_at"}
                entry.update(expires_at=info["expires_at"],
                             size_vram=record["size"] if size_vram is None else int(size_vram),
                             context_length=4096)
                models.append(entry)
        self._send_json(200, {"models": models})

    def _find(self, name: Any) -> dict[str, Any] | None:
        if not isinstance(name, str) or not name:
            return None
        with STATE.lock:
            return STATE.models.get(full_name(name))

    def _model_name_or_400(self, body: dict[str, Any]) -> str | None:
        """Return the model the body names, or answer 400 as Ollama does and return None."""
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            self._send_json(400, {"error": "model is required"})
            return None
        return name

    def _model_or_404(self, body: dict[str, Any]) -> dict[str, Any] | None:
        name = self._model_name_or_400(body)
        if name is None:
            return None
        record = self._find(name)
        if record is None:
            self._send_json(404, {"error": f"model '{name}' not found"})
        return record

    def show(self):
        found = self._body_and_model()
        if found is None:
            return
        body, record = found
        details = record["details"]
        family = details["family"]
        model_info = record["_model_info"]
        if model_info is None:
            model_info = {"general.architecture": family, "general.parameter_count": 3212749888,
                          f"{family}.context_length": 131072, f"{family}.block_count": 28,
                          f"{family}.embedding_length": 3072, f"{family}.attention.head_count": 24,
                          f"{family}.attention.head_count_kv": 8}
        blob_path = "/usr/share/ollama/.ollama/models/blobs/" + record["_blob"].replace(":", "-")
        modelfile = (f"# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, "
                     f"replace FROM with:\n# FROM {record['name']}\n\nFROM {blob_path}\n"
                     "TEMPLATE \"{{ .Prompt }}\"\n")
        self._send_json(200, {
            "license": "LICENSE", "modelfile": modelfile,
            "parameters": "stop \"<|eot_id|>\"", "template": "{{ .Prompt }}",
            "details": details,
            "model_info": model_info,
            "capabilities": ["completion"], "modified_at": record["modified_at"],
        })

    def generate(self):
        found = self._body_and_model()
        if found is None:
            return
        body, record = found
        name = record["name"]
        prompt = body.get("prompt") or ""
        keep_alive = body.get("keep_alive")
        if not prompt and not body.get("images"):
            if keep_alive == 0 or keep_alive == "0" or keep_alive == "0s":
                with STATE.lock:
                    STATE.loaded.pop(full_name(name), None)
                self._reply(body, {"model": name, "created_at": now_rfc3339(), "response": "",
                                   "done": True, "done_reason": "unload"})
                return
            if not self._sleep(float(self.behaviour["load_delay_s"])):
                with STATE.lock:
                    STATE.aborted_loads.append(name)
                return
            self._mark_loaded(name, keep_alive)
            self._reply(body, {"model": name, "created_at": now_rfc3339(), "response": "",
                               "done": True, "done_reason": "load"})
            return
        self._mark_loaded(name, keep_alive)
        tokens = _tokens(self.behaviour["tokens"])
        final = {"model": name, "created_at": now_rfc3339(), "response": "", "done": True, "done_reason": "stop",
                 "context": [1, 2, 3], "total_duration": 123456789, "load_duration": 1234567,
                 "prompt_eval_count": len(prompt.split()), "prompt_eval_duration": 1234567,
                 "eval_count": len(tokens), "eval_duration": 12345678}
        if body.get("stream") is False:
            self._sleep(float(self.behaviour["token_interval_s"]) * len(tokens))
            final["response"] = "".join(tokens)
            self._send_json(200, final)
            return
        self._stream_tokens(tokens, lambda t: {"model": name, "created_at": now_rfc3339(), "response": t,
                                               "done": False}, final)

    def chat(self):
        found = self._body_and_model()
        if found is None:
            return
        body, record = found
        name = record["name"]
        self._mark_loaded(name, body.get("keep_alive"))
        tokens = _tokens(self.behaviour["tokens"])
        final = {"model": name, "created_at": now_rfc3339(), "message": {"role": "assistant", "content": ""},
                 "done_reason": "stop", "done": True, "total_duration": 123456789, "load_duration": 1234567,
                 "prompt_eval_count": 7, "prompt_eval_duration": 1234567, "eval_count": len(tokens),
                 "eval_duration": 12345678}
        if body.get("stream") is False:
            self._sleep(float(self.behaviour["token_interval_s"]) * len(tokens))
            final["message"]["content"] = "".join(tokens)
            self._send_json(200, final)
            return
        self._stream_tokens(tokens, lambda t: {"model": name, "created_at": now_rfc3339(),
                                               "message": {"role": "assistant", "content": t}, "done": False},
                            final)

    def _stream_tokens(self, tokens: list[str], make, final: dict[str, Any]) -> None:
        self._start_stream()
        interval = float(self.behaviour["token_interval_s"])
        for index, token in enumerate(tokens):
            if index and interval and not self._sleep(interval):
                return
            if not self._line(make(token)):
                return
        if self._line(final):
            self._end_stream()

    def _reply(self, request: dict[str, Any], obj: dict[str, Any]) -> None:
        if request.get("stream") is False:
            self._send_json(200, obj)
        else:
            self._start_stream()
            if self._line(obj):
                self._end_stream()

    def _mark_loaded(self, name: str, keep_alive: Any) -> None:
        expires = FAR_FUTURE
        seconds = _keep_alive_s(keep_alive)
        if seconds is not None and seconds >= 0:
            expires = (datetime.now(timezone.utc) + timedelta(seconds=seconds)).astimezone().isoformat()
        with STATE.lock:
            STATE.loaded[full_name(name)] = {"size_vram": None, "expires_at": expires}

    def embed(self):
        found = self._body_and_model()
        if found is None:
            return
        body, record = found
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        self._send_json(200, {"model": record["name"], "embeddings": [_vector(str(i)) for i in inputs],
                              "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 8})

    def embeddings(self):
        found = self._body_and_model()
        if found is None:
            return
        body, record = found
        self._send_json(200, {"embedding": _vector(str(body.get("prompt", "")))})

    def pull(self):
        body = self._json_body()
        if body is None:
            return
        name = self._model_name_or_400(body)
        if name is None:
            return
        cfg = self.behaviour["pull"]
        stream = body.get("stream") is not False
        missing = {full_name(n) for n in self.behaviour["pull_missing"]}
        with STATE.lock:
            STATE.active_pulls[full_name(name)] = STATE.active_pulls.get(full_name(name), 0) + 1
        try:
            self._pull(name, cfg, stream, full_name(name) in missing)
        finally:
            with STATE.lock:
                STATE.active_pulls[full_name(name)] -= 1
                if not STATE.active_pulls[full_name(name)]:
                    del STATE.active_pulls[full_name(name)]
                if self.record["disconnected"]:
                    STATE.cancelled_pulls.append(name)

    def _pull(self, name: str, cfg: dict[str, Any], stream: bool, missing: bool) -> None:
        if not stream:
            if missing:
                self._send_json(500, {"error": "pull model manifest: file does not exist"})
            else:
                self._add_pulled(name, cfg["layers"])
                self._send_json(200, {"status": "success"})
            return
        self._start_stream()
        sent = 0
        interval = float(cfg["line_interval_s"])

        def send(obj: dict[str, Any]) -> bool:
            nonlocal sent
            if sent and interval and not self._sleep(interval):
                return False
            if cfg["exit_after_lines"] is not None and sent >= cfg["exit_after_lines"]:
                self.wfile.flush()
                os._exit(3)
            if cfg["die_after_lines"] is not None and sent >= cfg["die_after_lines"]:
                self._die()
                return False
            if cfg["hang_after_lines"] is not None and sent >= cfg["hang_after_lines"]:
                while not self._client_gone():
                    time.sleep(0.01)
                self._mark_disconnected()
                return False
            if cfg["error_after_lines"] is not None and sent >= cfg["error_after_lines"]:
                self._line({"error": cfg["error"]})
                self._end_stream()
                return False
            sent += 1
            return self._line(obj)

        if not send({"status": "pulling manifest"}):
            return
        if missing:
            if self._line({"error": "pull model manifest: file does not exist"}):
                self._end_stream()
            return
        rollback_after = cfg["rollback_after_lines"]
        progress_lines = 0
        steps = max(1, int(cfg["lines_per_layer"]))
        for index, total in enumerate(cfg["layers"]):
            digest = "sha256:" + hashlib.sha256(f"{name}/{index}".encode()).hexdigest()
            status = f"pulling {digest[7:19]}"
            for step in range(steps + 1):
                completed = total * step // steps
                if not send({"status": status, "digest": digest, "total": total, "completed": completed}):
                    return
                progress_lines += 1
                if rollback_after is not None and progress_lines == rollback_after and completed:
                    # A part failed and was retried: Ollama subtracts its bytes again.
                    if not send({"status": status, "digest": digest, "total": total,
                                 "completed": max(0, completed - max(1, total // (2 * steps)))}):
                        return
        for status in ("verifying sha256 digest", "writing manifest"):
            if not send({"status": status}):
                return
        self._add_pulled(name, cfg["layers"])
        if send({"status": "success"}):
            self._end_stream()

    def _add_pulled(self, name: str, layers: list[int]) -> None:
        record = _model_record({"name": name, "size": sum(layers), "modified_at": now_rfc3339()})
        with STATE.lock:
            STATE.models[full_name(name)] = record

    def delete(self):
        body = self._json_body()
        if body is None:
            return
        name = self._model_name_or_400(body)
        if name is None:
            return
        with STATE.lock:
            record = STATE.models.pop(full_name(name), None)
            STATE.loaded.pop(full_name(name), None)
        if record is None:
            self._send_json(404, {"error": f"model '{name}' not found"})
            return
        self._send(200, b"", "application/json; charset=utf-8")

    # -- OpenAI-compatible ---------------------------------------------------------------------

    def _openai_model_or_404(self, body: dict[str, Any]) -> dict[str, Any] | None:
        name = body.get("model")
        record = self._find(name)
        if record is None:
            self._send_json(404, {"error": {"message": f"model \"{name}\" not found, try pulling it first",
                                            "type": "api_error", "param": None, "code": None}})
        return record

    def v1_models(self):
        with STATE.lock:
            data = [_openai_model(m) for m in STATE.models.values()]
        self._send_json(200, {"object": "list", "data": data})

    def v1_model(self):
        name = unquote(urlsplit(self.path).path[len("/v1/models/"):])
        record = self._find(name)
        if record is None:
            self._send_json(404, {"error": {"message": f"model \"{name}\" not found", "type": "api_error",
                                            "param": None, "code": None}})
            return
        self._send_json(200, _openai_model(record))

    def v1_chat_completions(self):
        found = self._body_and_model(openai=True)
        if found is None:
            return
        body, record = found
        self._openai_completion(record["name"], body, chat=True)

    def v1_completions(self):
        found = self._body_and_model(openai=True)
        if found is None:
            return
        body, record = found
        self._openai_completion(record["name"], body, chat=False)

    def _openai_completion(self, name: str, body: dict[str, Any], *, chat: bool) -> None:
        tokens = _tokens(self.behaviour["tokens"])
        created = int(time.time())
        ident = ("chatcmpl-" if chat else "cmpl-") + str(created % 1000)
        kind = "chat.completion" if chat else "text_completion"
        usage = {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}
        if not body.get("stream"):
            self._sleep(float(self.behaviour["token_interval_s"]) * len(tokens))
            text = "".join(tokens)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"text": text, "index": 0, "finish_reason": "stop"})
            self._send_json(200, {"id": ident, "object": kind, "created": created, "model": name,
                                  "system_fingerprint": "fp_ollama", "choices": [choice], "usage": usage})
            return
        self._start_stream("text/event-stream")
        interval = float(self.behaviour["token_interval_s"])

        def event(obj: Any) -> bool:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            return self._chunk(f"data: {data}\n\n".encode())

        for index, token in enumerate(tokens + [None]):
            if index and interval and not self._sleep(interval):
                return
            finish = "stop" if token is None else None
            if chat:
                choice = {"index": 0, "delta": {"role": "assistant", "content": token or ""}, "finish_reason": finish}
            else:
                choice = {"text": token or "", "index": 0, "finish_reason": finish}
            if not event({"id": ident, "object": kind + (".chunk" if chat else ""), "created": created,
                          "model": name, "system_fingerprint": "fp_ollama", "choices": [choice]}):
                return
        if event("[DONE]"):
            self._end_stream()

    def v1_embeddings(self):
        found = self._body_and_model(openai=True)
        if found is None:
            return
        body, record = found
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        self._send_json(200, {"object": "list", "model": record["name"],
                              "data": [{"object": "embedding", "embedding": _vector(str(text)), "index": i}
                                       for i, text in enumerate(inputs)],
                              "usage": {"prompt_tokens": 8, "total_tokens": 8}})


ROUTES = {
    ("GET", "/"): Handler.root,
    ("GET", "/api/version"): Handler.version,
    ("GET", "/api/tags"): Handler.tags,
    ("GET", "/api/ps"): Handler.ps,
    ("POST", "/api/show"): Handler.show,
    ("POST", "/api/generate"): Handler.generate,
    ("POST", "/api/chat"): Handler.chat,
    ("POST", "/api/embed"): Handler.embed,
    ("POST", "/api/embeddings"): Handler.embeddings,
    ("POST", "/api/pull"): Handler.pull,
    ("DELETE", "/api/delete"): Handler.delete,
    ("GET", "/v1/models"): Handler.v1_models,
    ("POST", "/v1/chat/completions"): Handler.v1_chat_completions,
    ("POST", "/v1/completions"): Handler.v1_completions,
    ("POST", "/v1/embeddings"): Handler.v1_embeddings,
}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _openai_model(record: dict[str, Any]) -> dict[str, Any]:
    namespace = record["name"].split("/")[-2] if "/" in record["name"] else "library"
    return {"id": record["name"], "object": "model", "created": 1736932830, "owned_by": namespace}


def _tokens(count: int) -> list[str]:
    words = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", "."]
    return [words[i % len(words)] for i in range(int(count))]


def _vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i] - 128) / 128, 6) for i in range(dims)]


def _keep_alive_s(value: Any) -> float | None:
    if value is None:
        return 300.0
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    try:
        return float(text)
    except ValueError:
        pass
    for suffix in ("ms", "h", "m", "s"):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * units[suffix]
            except ValueError:
                return None
    return None


def serve(port: int = 0, host: str = "127.0.0.1") -> FakeOllamaServer:
    """Bind the fake; call serve_forever() on the result."""
    return FakeOllamaServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake Ollama server for tests and benchmarks.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server = serve(args.port, args.host)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- the controller tests use (in the test process) --------------------------------------------

class FakeOllama:
    """Start, stop and steer a fake Ollama process over its /_fake control paths."""

    def __init__(self, port: int = 0):
        self.port = port
        self.proc = None
        self._log_path: str | None = None
        self._http = None

    @property
    def url(self) -> str:
        """The base URL to use as OLLAMA_HOST."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> "FakeOllama":
        """Start the process (on the same port as before, if it ran already) and wait until it serves."""
        import subprocess
        import tempfile

        import requests

        if self.running:
            return self
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if self._log_path is None:
            fd, self._log_path = tempfile.mkstemp(prefix="fake-ollama-", suffix=".log")
            os.close(fd)
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.fake_ollama", "--port", str(self.port)],
                                         cwd=repo, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("PORT "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"fake Ollama did not start: {line!r}\n{self.log()}")
        self.port = int(line.split()[1])
        if self._http is None:
            self._http = requests.Session()
            self._http.trust_env = False
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._http.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the process: Ollama is down (connections are refused) until start()."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    kill = stop

    def log(self) -> str:
        if self._log_path and os.path.exists(self._log_path):
            with open(self._log_path, errors="replace") as f:
                return f.read()
        return ""

    def _control(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if body is None:
            response = self._http.get(self.url + "/_fake/" + path, timeout=10)
        else:
            response = self._http.post(self.url + "/_fake/" + path, json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Default models, nothing loaded, default behaviour, no recorded requests."""
        self._control("reset", {})

    def set_models(self, models: list[dict[str, Any]]) -> None:
        """Set the downloaded models: [{"name", "size"?, "digest"?, "family"?, "parameter_size"?,
        "quantization_level"?, "modified_at"?, "size_vram"? (used when it is loaded),
        "blob"? ("sha256:<hex>" its /api/show modelfile's FROM names), "model_info"?}]."""
        self._control("models", {"models": models})

    def set_loaded(self, models: list[dict[str, Any]]) -> None:
        """Set the loaded models: [{"name", "size_vram"?, "expires_at"?}] (names must be downloaded)."""
        self._control("loaded", {"models": models})

    def set_behaviour(self, **behaviour: Any) -> None:
        """Merge behaviour keys (see DEFAULT_BEHAVIOUR); `pull={...}` merges into the pull settings."""
        self._control("behaviour", behaviour)

    def state(self) -> dict[str, Any]:
        return self._control("state")

    def requests(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests (oldest first), optionally only those to `path` / with `method`."""
        records = self._control("requests")["requests"]
        return [r for r in records if (path is None or r["path"] == path) and (method is None or r["method"] == method)]

    def counts(self) -> dict[str, int]:
        """How many requests each "METHOD /path" received."""
        return self._control("counts")["counts"]

    def count(self, method: str, path: str) -> int:
        return self.counts().get(f"{method} {path}", 0)

    def cancelled_pulls(self) -> list[str]:
        """Names of pulls whose client went away before the stream ended."""
        return self.state()["cancelled_pulls"]

    def __enter__(self) -> "FakeOllama":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
