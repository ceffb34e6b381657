"""Real PostgreSQL and Redis servers for tests: throwaway, on 127.0.0.1, free ports, temp dirs.

Debian's binaries only (``postgresql``, ``redis-server``; ``scripts/test.sh`` installs them), never
the system services. Each server lives in its own temporary directory, removed when it stops.

    with PostgresServer() as pg:                 # initdb + start; stop and rmtree on exit
        url = pg.create_database()               # postgresql+psycopg://postgres@127.0.0.1:<port>/test_1
    with RedisServer() as redis_server:
        redis_server.client().set("k", "v")
        redis_server.kill(); redis_server.start()  # same port, empty again

The fixtures over these (``postgres_server``, ``postgres_url``, ``redis_server``, ``redis_url``)
are in tests/server_fixtures.py.
"""
from __future__ import annotations

import glob
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
PG_SUPERUSER = "postgres"
# The system user that runs PostgreSQL when the tests run as root (initdb and postgres refuse
# root); Debian's postgresql package creates it.
PG_SYSTEM_USER = "postgres"


class ServerError(RuntimeError):
    """A test server did not start (or stop) in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _version_key(path: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.]", Path(path).parent.parent.name))


def find_postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries: /usr/lib/postgresql/<version>/bin, newest version.

    They are not on PATH (Debian wraps the clients in pg_wrapper); PG_BINDIR overrides the search.
    """
    candidates = [os.environ["PG_BINDIR"] + "/initdb"] if os.environ.get("PG_BINDIR") else \
        sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    for initdb in reversed(candidates):
        bindir = Path(initdb).parent
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres")):
            return bindir
    return None


def find_redis_server() -> Path | None:
    """Debian's /usr/bin/redis-server (or the first on PATH)."""
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text[-limit:] if text else "(log is empty)"


def _stop_process(proc: subprocess.Popen | None, sig: int, timeout: float = STOP_TIMEOUT_S) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb in a temp dir, then ``postgres`` as a child process.

    Listens on 127.0.0.1 only (a free port) and on a unix socket in the temp dir; trust auth;
    fsync, synchronous_commit and full_page_writes off (nothing here has to survive a crash).
    As root, initdb and postgres run as the ``postgres`` system user, which owns the temp dir.
    """

    def __init__(self, bindir: Path | str | None = None, port: int | None = None):
        found = Path(bindir) if bindir else find_postgres_bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb)")
        self.bindir = found
        self.port = port
        self.base_dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count(1)

    # -- paths and URLs ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of one database on this server."""
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string (for psycopg.connect)."""
        return f"host=127.0.0.1 port={self.port} user={PG_SUPERUSER} dbname={database} connect_timeout=2"

    # -- lifecycle --------------------------------------------------------------------------------
    def _run_as(self) -> dict:
        """Popen arguments that drop root to the postgres system user (no preexec_fn: threads)."""
        if os.geteuid() != 0:
            return {}
        return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER, "extra_groups": []}

    def start(self) -> PostgresServer:
        if self.running:
            return self
        if self.base_dir is None:
            self._init_cluster()
        auto_port = self.port is None
        for _attempt in range(3):
            if auto_port:
                self.port = free_port()
            try:
                self._start_postgres()
                return self
            except ServerError:
                # Another process may have taken the port between free_port() and bind().
                if not (auto_port and "already in use" in _log_tail(self.log_path)):
                    raise
        raise ServerError(f"PostgreSQL found no free port\n--- {self.log_path} ---\n{_log_tail(self.log_path)}")

    def _init_cluster(self) -> None:
        run_as = self._run_as()
        if run_as:
            import pwd

            try:
                account = pwd.getpwnam(PG_SYSTEM_USER)
            except KeyError:
                raise ServerError(f"running as root needs the {PG_SYSTEM_USER!r} system user to run PostgreSQL "
                                  "(Debian's postgresql package creates it)") from None
        # The system temp dir, not pytest's basetemp: that one is 0700 root, so the postgres user
        # could not reach inside it.
        self.base_dir = Path(tempfile.mkdtemp(prefix="vram-test-pg-"))
        self.socket_dir.mkdir()
        if run_as:
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", PG_SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--no-locale", "--no-sync"],
            cwd=self.base_dir, env=self._env(), capture_output=True, text=True, timeout=60, **run_as)
        if result.returncode != 0:
            raise ServerError(f"initdb failed ({result.returncode})\n{result.stdout}{result.stderr}")
        # Loopback TCP and the socket only; initdb -A trust would also trust ::1.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        if run_as:
            os.chown(hba, account.pw_uid, account.pw_gid)

    def _env(self) -> dict:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return env

    def _start_postgres(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "100", "logging_collector": "off",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.base_dir, env=self._env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, **self._run_as())
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=1) as conn:
                    data_directory = conn.execute("SHOW data_directory").fetchone()[0]
                # Ours, not another cluster on the port (that one's bind error is on its way).
                if Path(data_directory) == self.data_dir:
                    return
                time.sleep(0.05)
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.05)
        status = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else \
            f"not ready within {START_TIMEOUT_S:g} s ({last_error})"
        _stop_process(self.proc, signal.SIGQUIT)
        self.proc = None
        raise ServerError(f"PostgreSQL on 127.0.0.1:{self.port} {status}\n"
                          f"--- {self.log_path} ---\n{_log_tail(self.log_path)}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, remove: bool = True) -> None:
        """Immediate shutdown (SIGQUIT, as pg_ctl stop -m immediate), then remove the temp dir."""
        _stop_process(self.proc, signal.SIGQUIT)
        self.proc = None
        if remove and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- databases --------------------------------------------------------------------------------
    def create_database(self, name: str | None = None, template: str = "template0") -> str:
        """CREATE DATABASE (a fresh, empty one by default) and return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = name or f"test_{next(self._names)}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, disconnecting whoever is still connected to it."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class RedisServer:
    """``redis-server`` as a child process on 127.0.0.1, no persistence, its dir a temp dir.

    ``stop()``, ``kill()`` and ``restart()`` keep the port, so clients can reconnect to the same URL.
    """

    def __init__(self, binary: Path | str | None = None, port: int | None = None):
        found = Path(binary) if binary else find_redis_server()
        if found is None:
            raise FileNotFoundError("redis-server not found (/usr/bin/redis-server)")
        self.binary = found
        self.port = port
        self.base_dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs):
        """A redis-py client for database 0."""
        import redis

        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis.from_url(self.url, **kwargs)

    def start(self) -> RedisServer:
        if self.running:
            return self
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="vram-test-redis-"))
        auto_port = self.port is None
        for _attempt in range(3):
            if auto_port:
                self.port = free_port()
            try:
                self._start_redis()
                return self
            except ServerError:
                if not (auto_port and "already in use" in _log_tail(self.log_path)):
                    raise
                self.port = None
        raise ServerError(f"redis-server found no free port\n--- {self.log_path} ---\n{_log_tail(self.log_path)}")

    def _start_redis(self) -> None:
        args = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.base_dir), "--daemonize", "no", "--logfile", ""]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.base_dir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with self.client(socket_connect_timeout=1, socket_timeout=1) as client:
                    # Ours, not another server on the port (that one's bind error is on its way).
                    if client.info("server")["process_id"] == self.proc.pid:
                        return
            except redis.RedisError as exc:  # ConnectionError, BusyLoadingError
                last_error = exc
            time.sleep(0.02)
        status = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else \
            f"did not answer PING within {START_TIMEOUT_S:g} s ({last_error})"
        _stop_process(self.proc, signal.SIGKILL)
        self.proc = None
        raise ServerError(f"redis-server on 127.0.0.1:{self.port} {status}\n"
                          f"--- {self.log_path} ---\n{_log_tail(self.log_path)}")

    def stop(self) -> None:
        """Orderly shutdown (SIGTERM); the port and temp dir stay for restart()."""
        _stop_process(self.proc, signal.SIGTERM)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: clients see their connections reset."""
        _stop_process(self.proc, signal.SIGKILL)
        self.proc = None

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port, empty."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temp dir."""
        self.stop()
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
