"""The one owner of the database: the engine, the unit of work, the migrations (Alembic, db/migrate.py).

Every feature keeps its own models and queries (auth/models.py, audit/, usage/, ...) on the one
`Base` below; this module only knows how to reach the database. The drivers (sqlite3, psycopg)
block in C, so every unit of work runs in a real OS thread through the async seam, one at a time
(see `Database.run`): a slow query never stalls the event loop, `vram_update` or other requests.
"""
from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

import concurrency
from errors import ApiError

log = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps


class Base(DeclarativeBase):
    """The declarative base every feature's models derive from (one metadata, one migration history)."""


class DatabaseUnavailableError(ApiError):
    """The database is locked, gone or broken: a 503 that names it, never a 500."""

    def __init__(self, message: str):
        super().__init__(message, status=503)


class DatabaseStartupError(Exception):
    """The database cannot be used at start-up (unreachable, or written by a newer version)."""


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{(Path(data_dir) / 'dashboard.db').resolve()}"


def describe_url(url: str) -> str:
    """Return the URL without its password, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<unparsable URL>"


class Database:
    """An engine and a serialised unit of work: `db.run(lambda session: ...)`."""

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        options: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            # Used from tpool's OS threads, one unit of work at a time (the lock below).
            options["connect_args"] = {"check_same_thread": False, "timeout": 5}
        else:
            options.update(pool_pre_ping=True, pool_size=2, max_overflow=2,
                           connect_args={"connect_timeout": 5})
        self.engine: Engine = create_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # A real lock (not a green one): the work runs in OS threads. One unit of work at a time
        # keeps SQLAlchemy's own (green, after monkey_patch) locks uncontended across threads.
        self._lock = concurrency.os_lock()

    def run(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in one transaction in a real thread; commit, or roll back on error."""
        try:
            return concurrency.run_in_thread(self._run_locked, work)
        except IntegrityError:
            raise  # a conflict in the data (a taken name), for the caller to answer
        except (DBAPIError, SQLAlchemyError) as exc:  # locked, gone, broken, pool exhausted
            raise self.unavailable(exc) from None

    def _run_locked(self, work: Callable[[Session], T]) -> T:
        with self._lock:
            with self._sessions.begin() as session:
                return work(session)

    def unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        log.warning("database error: %s", reason)
        return DatabaseUnavailableError(
            f"the database is unavailable ({reason}); check DATABASE_URL and that the database "
            "server is running")

    def migrate(self) -> None:
        """Bring the schema to the newest revision; refuse a database written by a newer version.

        At the head revision already (every start but the first after an upgrade), that is one
        query. Otherwise Alembic runs in a child process (db/migrate.py), so that none of it stays
        in this one; in this process only for a database that lives in its memory.
        """
        try:
            with self.engine.connect() as connection:
                current = schema_revisions(connection)
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseStartupError(_reason(exc)) from None
        if current and current == head_revisions():
            return
        if self.in_memory:
            from db import migrate

            migrate.upgrade(self.engine)
            return
        _migrate_in_child(self.url)
        # The child changed the schema under this engine's pooled connection(s): start afresh.
        self.engine.dispose()

    @property
    def in_memory(self) -> bool:
        """Whether the database lives in this process's memory (no other process can reach it)."""
        if not self.is_sqlite:
            return False
        url = self.engine.url
        return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def dispose(self) -> None:
        self.engine.dispose()


def schema_revisions(connection) -> frozenset[str]:
    """Return the revisions Alembic recorded in the database (none for an empty database)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return frozenset()
    return frozenset(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def head_revisions(versions_dir: Path = MIGRATIONS_DIR / "versions") -> frozenset[str] | None:
    """Return the head revision(s) of migrations/versions, read from the scripts' own assignments
    (`revision = ...`, `down_revision = ...`) without Alembic; None when a script is not shaped
    like that, and then Alembic itself decides (tests/test_database.py checks both agree)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions_dir.glob("*.py")):
        values = {}
        try:
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                            values[target.id] = ast.literal_eval(node.value)
        except (OSError, SyntaxError, ValueError, TypeError):
            return None
        revision, down = values.get("revision"), values.get("down_revision")
        downs = (down,) if isinstance(down, str) else down or ()
        if not isinstance(revision, str) or not isinstance(downs, (tuple, list)) \
                or not all(isinstance(d, str) for d in downs):
            return None
        revisions.add(revision)
        parents.update(downs)
    heads = frozenset(revisions - parents)
    return heads or None


def _migrate_in_child(url: str) -> None:
    """Run db/migrate.py in a child process; raise DatabaseStartupError with its reason."""
    from db.migrate import EXIT_REFUSED

    environment = dict(os.environ)
    root = str(MIGRATIONS_DIR.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, (root, environment.get("PYTHONPATH"))))
    # -P: the working directory (kept, for a relative sqlite:/// path) is not on the module path.
    # Its own process group: a Ctrl-C in the terminal stops the server after the migration, not
    # the migration halfway.
    result = subprocess.run([sys.executable, "-P", "-m", "db.migrate"], input=url + "\n", capture_output=True,
                            text=True, env=environment, process_group=0)
    for line in result.stderr.splitlines():
        log.debug("migration: %s", line)
    if result.returncode == 0:
        return
    said = (result.stdout if result.returncode == EXIT_REFUSED else result.stderr).strip().splitlines()
    if result.returncode < 0:
        reason = f"the schema migration was stopped by signal {-result.returncode}"
    else:
        reason = said[-1][:300] if said else f"the schema migration failed (exit {result.returncode})"
    raise DatabaseStartupError(reason)


def _reason(exc: BaseException) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip()
    return (message.splitlines() or [type(exc).__name__])[0][:300]


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never wait for the writer; NORMAL is safe with WAL (no corruption on a crash).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def open_database(url: str) -> Database:
    """Open and migrate the database, or raise DatabaseStartupError with one readable reason."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseStartupError(f"cannot create {str(path.parent)!r}: {exc.strerror}") from None
    try:
        database = Database(url)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise DatabaseStartupError(_reason(exc)) from None
    database.migrate()
    return database


