"""Alembic's upgrade to the head revision, and its short-lived process: `python -m db.migrate`.

Alembic brings Mako, every dialect's DDL and autogenerate with it (about 11 MB that would stay in
the server for its whole life to run once at start-up), so the server imports none of it:
`Database.migrate` looks at the revision itself and, only when the schema is not at the head,
starts this module in a child process that reads the URL on stdin (never in argv, where `ps`
shows a password) and ends with the schema migrated (exit 0) or one reason on stdout (exit 2).
"""
from __future__ import annotations

import logging
import sys

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from db import MIGRATIONS_DIR, Database, DatabaseStartupError, _reason

EXIT_REFUSED = 2  # stdout holds the one reason (DatabaseStartupError)


def upgrade(engine: Engine) -> None:
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
        with engine.connect() as connection:
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
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseStartupError(_reason(exc)) from None


def main() -> int:
    url = sys.stdin.readline().rstrip("\n")
    try:
        database = Database(url)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        print(_reason(exc))
        return EXIT_REFUSED
    try:
        upgrade(database.engine)
    except DatabaseStartupError as exc:
        print(exc)
        return EXIT_REFUSED
    finally:
        database.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
