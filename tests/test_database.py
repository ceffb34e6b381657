"""db.Database.migrate: one query at the head revision; Alembic in a child process otherwise, so
none of it stays in the server's memory; the head read from the scripts agrees with Alembic's."""
import subprocess
import sys
import textwrap

import pytest

from db import MIGRATIONS_DIR, Database, DatabaseStartupError, head_revisions, open_database
from tests.live import REPO


def test_the_head_read_from_the_scripts_is_alembics():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revisions() == frozenset(ScriptDirectory.from_config(config).get_heads())


def _script(directory, name, revision, down):
    (directory / f"{name}.py").write_text(textwrap.dedent(f"""\
        from alembic import op
        revision: str = {revision!r}
        down_revision = {down!r}
        def upgrade() -> None:
            pass
        """))


def test_heads_of_a_branch_and_a_merge(tmp_path):
    _script(tmp_path, "a", "a1", None)
    _script(tmp_path, "b", "b1", "a1")
    _script(tmp_path, "c", "c1", "a1")
    assert head_revisions(tmp_path) == {"b1", "c1"}
    _script(tmp_path, "d", "d1", ("b1", "c1"))
    assert head_revisions(tmp_path) == {"d1"}


def test_a_script_not_shaped_like_alembics_leaves_the_decision_to_alembic(tmp_path):
    _script(tmp_path, "a", "a1", None)
    (tmp_path / "b.py").write_text("revision = make_revision()\ndown_revision = 'a1'\n")
    assert head_revisions(tmp_path) is None


def _run(code: str, cwd) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_alembic_never_enters_the_process_that_opens_the_database(tmp_path):
    """A new database (relative to the working directory) is migrated by a child; then, at the head,
    opening it is one query."""
    out = _run("""
        import sys
        from db import open_database
        for _ in range(2):
            database = open_database("sqlite:///data/dashboard.db")
            print(sorted(database.table_names()), "alembic" in sys.modules)
            database.dispose()
        """, tmp_path)
    first, second = out.splitlines()
    assert "'alembic_version'" in first and "'users'" in first and first.endswith("False")
    assert second == first
    assert (tmp_path / "data" / "dashboard.db").is_file()


def test_a_database_of_this_process_memory_is_migrated_here():
    database = Database("sqlite://")
    assert database.in_memory
    database.migrate()
    assert "users" in database.table_names()
    database.dispose()


def test_an_unknown_revision_is_one_reason_from_the_child(tmp_path):
    import sqlite3

    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    open_database(url).dispose()
    with sqlite3.connect(tmp_path / "dashboard.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffff'")
    with pytest.raises(DatabaseStartupError) as raised:
        open_database(url)
    assert "ffff" in str(raised.value) and "\n" not in str(raised.value)
