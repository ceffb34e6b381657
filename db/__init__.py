"""The one owner of the database: the engine, the unit of work, the migrations (Alembic).

Every feature keeps its own models and queries (auth/models.py, audit/, usage/, ...) on the one
`Base` below; this module only knows how to reach the database. The drivers (sqlite3, psycopg)
block in C, so every unit of work runs in a real OS thread through the async seam, one at a time
(see `Database.run`): a slow query never stalls the event loop, `vram_update` or other requests.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

import concurrency
from errors import ApiError

log = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


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
        """Bring the schema to the newest revision; refuse a database written by a newer version."""
        # Alembic narrates every step at INFO (from its import on); a start-up needs none of it.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from alembic.script.revision import RevisionError
        from alembic.util.exc import CommandError

        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        script = ScriptDirectory.from_config(config)
        try:
            with self.engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
            if current is not None and script.get_revision(current) is None:
                raise DatabaseStartupError(
                    f"it was written by a newer version of VRAM Dashboard (schema revision {current})")
        except DatabaseStartupError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseStartupError(_reason(exc)) from None
        except (CommandError, RevisionError) as exc:  # a revision this code does not know
            raise DatabaseStartupError(_reason(exc)) from None
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseStartupError(_reason(exc)) from None

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def dispose(self) -> None:
        self.engine.dispose()


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


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


