"""Issue 10, the HTTP server's limits: descriptors running out, slow and idle connections, lenient
framing, logins starving the poller, huge keep_alive values, stale readings, secrets in the access
log, and foreign Host headers. Each scenario is named for what a hostile or broken client does."""
import json
import os
import resource
import select
import socket
import time

import pytest
import requests

import concurrency
from tests.live import start_server, wait_for

HEADER_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.0
PER_CLIENT = 30
SECRET = "s3cret-query-token-value"


# -- a live server with short limits --------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, fake_ollama_server):
    live = start_server(tmp_path_factory.mktemp("hardening"), ollama_url=fake_ollama_server.url, extra={
        "DASHBOARD_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S),
        "DASHBOARD_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE_TIMEOUT_S),
        "DASHBOARD_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S),
        "DASHBOARD_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        "VRAM_POLL_INTERVAL_SECONDS": "0.5", "LOG_LEVEL": "DEBUG"})
    yield live
    live.stop()


@pytest.fixture
def fake(fake_ollama, server):
    fake_ollama.reset()
    return fake_ollama


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _read_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """Read until the server closes the connection (or `timeout_s` passes: then fail)."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _json_body(reply: bytes) -> dict:
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def _wait_closed(socks: list[socket.socket], within_s: float, trickle: bytes = b"") -> dict[int, tuple[float, bytes]]:
    """Wait for the server to close each socket (sending `trickle` to the open ones every 0.2 s);
    return {index: (seconds until closed, what it answered)}."""
    started = time.monotonic()
    closed: dict[int, tuple[float, bytes]] = {}
    replies = {i: b"" for i in range(len(socks))}
    while len(closed) < len(socks) and time.monotonic() - started < within_s:
        open_socks = [s for i, s in enumerate(socks) if i not in closed]
        readable, _, _ = select.select(open_socks, [], [], 0.2)
        for sock in readable:
            i = socks.index(sock)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            replies[i] += chunk
            if not chunk:
                closed[i] = (time.monotonic() - started, replies[i])
        for i, sock in enumerate(socks):
            if trickle and i not in closed:
                try:
                    sock.send(trickle)
                except OSError:
                    pass
    return closed


# -- 3: one address cannot take the whole pool; slow, idle and unfinished requests end -----------

def test_one_address_cannot_take_the_whole_pool(server):
    time.sleep(0.3)  # connections of earlier tests have been seen closing
    held = [_connect(server) for _ in range(PER_CLIENT)]
    try:
        with _connect(server) as extra:
            reply = _read_all(extra)
        assert _status(reply) == 503 and b"Retry-After: 1" in reply
        assert "too many connections" in _json_body(reply)["error"]
    finally:
        for sock in held:
            sock.close()
    assert wait_for(lambda: requests.get(f"{server.url}/health", timeout=2).status_code == 200, 3)



def test_slowloris_connections_are_closed_at_the_header_deadline(server):
    socks = [_connect(server) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # One more header byte to each every 0.2 s: every read makes progress, the head never ends.
        closed = _wait_closed(socks, within_s=HEADER_TIMEOUT_S + 3, trickle=b"a")
    finally:
        for sock in socks:
            sock.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow connections still open"
    assert max(seconds for seconds, _ in closed.values()) < HEADER_TIMEOUT_S + 1.5
    assert all(_status(reply) == 408 for _, reply in closed.values())


@pytest.mark.parametrize("opening", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32)],
                         ids=["nothing", "tls-client-hello"])
def test_a_connection_that_never_sends_a_request_is_closed(server, opening):
    with _connect(server) as sock:
        sock.sendall(opening)
        closed = _wait_closed([sock], within_s=HEADER_TIMEOUT_S + 3)
    assert closed and closed[0][0] < HEADER_TIMEOUT_S + 1.5


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        closed = _wait_closed([sock], within_s=KEEPALIVE_TIMEOUT_S + 3)
    assert closed, "the idle connection was kept"
    assert KEEPALIVE_TIMEOUT_S - 0.3 < closed[0][0] < KEEPALIVE_TIMEOUT_S + 1.5


def test_an_unfinished_chunked_body_is_cut_at_the_body_timeout(server, fake):
    with _connect(server) as sock:
        sock.sendall(b"POST /ollama/api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + server.login().encode() + b"\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mod")
        closed = _wait_closed([sock], within_s=BODY_TIMEOUT_S + 3)
    assert closed and closed[0][0] < BODY_TIMEOUT_S + 1.5
    assert fake.count("POST", "/api/generate") == 0
    assert "Traceback" not in server.log()


def test_a_websocket_outlives_every_timeout(server):
    import socketio

    events = []
    client = socketio.Client(reconnection=False)
    client.on("vram_update", lambda data: events.append(time.monotonic()))
    client.connect(server.url, auth={"token": server.login()}, transports=["websocket"], wait_timeout=5)
    try:
        time.sleep(max(HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, BODY_TIMEOUT_S) * 2)
        assert client.connected
        last = time.monotonic()
        assert wait_for(lambda: events and events[-1] > last, 2), "no vram_update after the timeouts passed"
    finally:
        client.disconnect()


# -- 4: one reading of the framing, or 400 and close ------------------------------------------------

SMUGGLING = {
    "two-equal-content-lengths": b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "conflicting-content-lengths": b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    "content-length-list": b"Content-Length: 2, 2\r\n\r\n{}",
    "content-length-plus": b"Content-Length: +2\r\n\r\n{}",
    "gzip-chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "xchunked": b"Transfer-Encoding: xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "two-transfer-encodings": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunked-and-content-length": b"Transfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "folded-transfer-encoding": b"Transfer-Encoding: identity\r\n chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "folded-header": b"X-Note: a\r\n\tb\r\nContent-Length: 2\r\n\r\n{}",
    "space-before-colon": b"Transfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("framing", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_framing_is_400_closed_and_never_reaches_ollama(server, fake, framing):
    with _connect(server) as sock:
        sock.sendall(b"POST /ollama/api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + server.login().encode() + b"\r\n" + framing
                     + b"GET /ollama/api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = _read_all(sock)  # returns only once the server has closed the connection
    assert _status(reply) == 400, reply[:200]
    assert reply.count(b"HTTP/1.1 ") == 1 and "error" in _json_body(reply)
    assert fake.count("POST", "/api/generate") == 0 and fake.count("GET", "/api/tags") == 0


def test_a_header_line_starting_with_a_space_is_400(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n Host: 127.0.0.1\r\n\r\n")
        assert _status(_read_all(sock)) == 400


@pytest.mark.parametrize("target, status", [(b"http://127.0.0.1/health", 400), (b"*", 400), (b"health", 400),
                                            (b"//health", 404), (b"/health", 200)])
def test_the_request_target_is_a_path_taken_as_sent(server, target, status):
    with _connect(server) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _status(_read_all(sock)) == status


# -- 8: no query values in the access log ------------------------------------------------------------

def test_the_debug_access_log_has_no_query_values(server):
    assert requests.get(f"{server.url}/health?token={SECRET}&x=1", timeout=5).status_code == 200
    assert wait_for(lambda: "/health?token=…&x=…" in server.log(), 3), server.log()[-2000:]
    assert SECRET not in server.log()


# -- 9: a foreign Host is refused below Flask and Socket.IO ------------------------------------------

@pytest.mark.parametrize("path", ["/health", "/api/vram/status", "/socket.io/?EIO=4&transport=polling"])
def test_a_foreign_host_is_400_on_every_path(server, path):
    response = requests.get(f"{server.url}{path}", headers={"Host": f"rebound.example:{server.port}"}, timeout=5)
    assert response.status_code == 400
    assert "DASHBOARD_ALLOWED_HOSTS" in response.json()["error"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# -- 1: descriptors running out --------------------------------------------------------------------

def _ulimit_files(limit: int) -> tuple[str, ...]:
    """A shell that sets the soft and hard limit on open files (so start-up cannot raise past it)."""
    return ("sh", "-c", f'ulimit -n {limit} && exec "$0" "$@"')


def test_running_out_of_descriptors_does_not_end_the_server(tmp_path):
    live = start_server(tmp_path, command_prefix=_ulimit_files(256),
                        extra={"DASHBOARD_MAX_CONNECTIONS_PER_CLIENT": "10000"})
    clients: list[socket.socket] = []
    try:
        assert wait_for(lambda: "at most 64 connections" in live.log(), 3), live.log()
        # Now leave it only a few spare descriptors: the idle connections below exhaust them.
        in_use = len(os.listdir(f"/proc/{live.proc.pid}/fd"))
        resource.prlimit(live.proc.pid, resource.RLIMIT_NOFILE, (in_use + 8, 256))
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", live.port))
            clients.append(sock)
        assert wait_for(lambda: "cannot accept connections" in live.log(), 5), live.log()
        time.sleep(1.5)  # a few accept() retries
        assert live.proc.poll() is None, live.log()
        assert live.log().count("cannot accept connections") == 1
        for sock in clients:
            sock.close()
        clients = []
        # Answered again; the episode's end is logged at the first accept 1 s after the last failure.
        assert wait_for(lambda: _health_ok(live) and "accepting connections again" in live.log(), 8), live.log()
    finally:
        for sock in clients:
            sock.close()
        code = live.stop()
    assert code == 0 and "Traceback" not in live.log()


def _health_ok(live) -> bool:
    try:
        return requests.get(f"{live.url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_the_connection_cap_leaves_descriptors_free():
    from server import FD_HEADROOM, connection_cap

    assert connection_cap(10000, 65536) == 10000
    assert connection_cap(10000, 1024) == (1024 - FD_HEADROOM) // 2
    assert connection_cap(10000, resource.RLIM_INFINITY) == 10000


def test_accept_waits_out_a_shortage_and_logs_it_once(caplog):
    from server import _PatientListener

    class Listener:
        def __init__(self):
            self.calls = 0

        def accept(self):
            self.calls += 1
            if self.calls <= 4:
                raise OSError(24, "Too many open files")
            return ("connection", ("127.0.0.1", 1))

    listener = _PatientListener(Listener(), pause_s=(0.01, 0.02), quiet_s=0.05)
    assert listener.accept() == ("connection", ("127.0.0.1", 1))
    assert caplog.text.count("cannot accept connections") == 1 and "accepting connections again" not in caplog.text
    listener._sock.calls = 0  # another shortage soon after: the same episode
    assert listener.accept() == ("connection", ("127.0.0.1", 1))
    time.sleep(0.06)
    assert listener.accept() == ("connection", ("127.0.0.1", 1))
    assert caplog.text.count("cannot accept connections") == 1 and "accepting connections again" in caplog.text


# -- 5: password checks in threads of their own -----------------------------------------------------

def test_a_login_flood_does_not_delay_vram_polls(nvml_reader):
    from auth import passwords
    from errors import ServiceUnavailableError
    from vram.poller import VramPoller

    hashed = passwords.hash_password("correct-horse-battery", rounds=12)
    published: list[float] = []
    poller = VramPoller(nvml_reader, 0.5, publish=lambda body: published.append(time.monotonic()))
    task = concurrency.spawn(poller.run)
    outcomes = []

    def login():
        try:
            outcomes.append(passwords.check_password_async("wrong-password", hashed))
        except ServiceUnavailableError:
            outcomes.append("503")

    try:
        concurrency.sleep(0.6)
        started = time.monotonic()
        flood = [concurrency.spawn(login) for _ in range(60)]
        for thread in flood:
            thread.wait()
        flood_s = time.monotonic() - started
        concurrency.sleep(0.6)
    finally:
        poller.stop()
        concurrency.kill(task)
    during = [t for t in published if started - 0.5 <= t <= started + flood_s + 0.5]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert outcomes.count(False) == passwords.PASSWORD_CHECK_WORKERS + passwords.PASSWORD_CHECK_QUEUE
    assert outcomes.count("503") == 60 - outcomes.count(False)
    assert len(gaps) >= 2 and max(gaps) <= 0.75, f"poll gaps {gaps} during a {flood_s:.1f} s flood"


def test_the_bounded_pool_refuses_at_once_when_full_and_passes_errors_back():
    pool = concurrency.BoundedThreadPool(1, 1, name="test")
    results = []

    def call(fn, *args):
        try:
            results.append(pool.submit_and_wait(fn, *args, timeout_s=2))
        except Exception as exc:
            results.append(type(exc).__name__)

    threads = [concurrency.spawn(call, concurrency.blocking_sleep, 0.3) for _ in range(3)]
    for thread in threads:
        thread.wait()
    assert sorted(map(str, results)) == ["None", "None", "PoolBusyError"]
    call(int, "x")
    assert results[-1] == "ValueError"
    started = time.monotonic()
    with pytest.raises(concurrency.PoolTimeoutError):
        pool.submit_and_wait(concurrency.blocking_sleep, 0.5, timeout_s=0.1)
    assert time.monotonic() - started < 0.4
    concurrency.sleep(0.6)
    assert pool.in_flight == 0  # the call that timed out is not counted once it ends


# -- 6: keep_alive within Go's Duration -------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"1" + b"0" * 400, b'"' + b"1" * 400 + b'"', b"1e300", b'"99999999999h"',
                                 b"9223372037"])
def test_a_keep_alive_beyond_what_ollama_holds_is_400_naming_it(api, raw):
    response = api("post", "load", data=b'{"model_name": "llama3.2", "keep_alive": ' + raw + b"}",
                   content_type="application/json")
    assert response.status_code == 400, response.get_json()
    assert "keep_alive" in response.get_json()["error"]


@pytest.mark.parametrize("raw, parsed", [("-1", -1), ("9223372036", 9223372036), ("2562047h", "2562047h"),
                                         (300.5, 300.5), ("1.0", 1)])
def test_keep_alive_values_ollama_holds_pass(raw, parsed):
    from ollama_client.keep_alive import parse_keep_alive

    assert parse_keep_alive(raw) == parsed


# -- 7: a stale reading is not presented as fresh ----------------------------------------------------

def test_a_reading_older_than_three_intervals_is_stale(client, auth, services, monkeypatch):
    services.poller.tick()
    fresh = client.get("/health").get_json()
    assert fresh["nvml"] is True and fresh["stale"] is False
    now = concurrency.monotonic()
    monkeypatch.setattr(concurrency, "monotonic", lambda: now + 3 * services.poller.interval_s + 1)
    health = client.get("/health").get_json()
    assert health["status"] == "degraded" and health["nvml"] is False and health["stale"] is True
    status = client.get("/api/vram/status", headers=auth.headers())
    assert status.status_code == 200
    assert status.headers["X-Reading-Stale"] == "true"
    assert float(status.headers["X-Reading-Age"]) >= 3 * services.poller.interval_s + 1
    assert status.get_json()["gpus"]  # the reading itself, as it was


# -- 9: which hosts pass by default ------------------------------------------------------------------

@pytest.mark.parametrize("host, status", [("localhost", 200), ("127.0.0.1:5000", 200), ("[::1]:5000", 200),
                                          ("192.168.1.20:5000", 200), (socket.gethostname(), 200),
                                          ("dash.localhost", 200), ("rebound.example", 400),
                                          ("localhost.rebound.example", 400)])
def test_default_allowed_hosts(client, host, status):
    allowed = {200: 401, 400: 400}[status]  # /api/auth/me: 401 without a token, once the host passes
    assert client.get("/api/auth/me", headers={"Host": host}).status_code == allowed


@pytest.mark.parametrize("config_overrides, host, status", [
    ({"allowed_hosts": ("dash.lan",)}, "dash.lan:5000", 200),
    ({"allowed_hosts": ("dash.lan",)}, "localhost", 400),
    ({"allowed_hosts": ("dash.lan",)}, "10.0.0.1", 400),
    ({"allowed_hosts": ("*",)}, "anything.example", 200),
], indirect=["config_overrides"])
def test_configured_allowed_hosts(client, config_overrides, host, status):
    allowed = {200: 401, 400: 400}[status]
    assert client.get("/api/auth/me", headers={"Host": host}).status_code == allowed


TRIM_SCRIPT = """
import server
def rss_kb():
    return int([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS")][0])
pieces = [bytes(4000) + bytes([i % 256]) for i in range(5000)]  # ~20 MB from malloc, not pymalloc
kept = pieces[::10]  # every tenth stays: the freed chunks lie between live ones, not at the heap's top
del pieces
before = rss_kb()
released = server.release_startup_memory()
print(released, before - rss_kb())
"""


def test_memory_freed_after_start_up_goes_back_to_the_os():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True).stdout
    released, freed_kb = out.split()
    assert released == "True"
    assert int(freed_kb) > 10_000  # most of the ~18 MB freed between live pieces


def test_without_malloc_trim_nothing_is_released_and_nothing_breaks(monkeypatch):
    import server

    class NoTrim:  # a libc without malloc_trim (musl)
        pass

    monkeypatch.setattr(server.ctypes, "CDLL", lambda name: NoTrim())
    assert server.release_startup_memory() is False
