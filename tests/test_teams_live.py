"""`python app.py` restarted on the same database: sessions, keys and download history persist."""
import signal

import pytest
import requests

from tests.live import server_env, start_server, wait_until

pytestmark = pytest.mark.live
BASE = "/api/models/ollama"


def test_a_restart_keeps_sessions_and_a_running_download_is_an_error_after_it(tmp_path, fake_ollama):
    # The first start creates and migrates the database; the second finds it.
    env = server_env(tmp_path, port=0, ollama_url=fake_ollama.url, fresh_database=True)
    first = start_server(tmp_path, ollama_url=fake_ollama.url, fresh_database=True)
    try:
        headers = first.headers()
        key = requests.post(f"{first.url}/api/keys", headers=headers, json={"name": "ci"}, timeout=5).json()["key"]
        fake_ollama.set_behaviour(pull={"hang_after_lines": 3})
        requests.post(f"{first.url}{BASE}/download", json={"model_name": "big:70b"}, headers=headers, timeout=10)
        wait_until(lambda: requests.get(f"{first.url}{BASE}/downloads", headers=headers,
                                        timeout=5).json()["downloads"])
        # SIGKILL: no chance to mark it interrupted; the next start must.
        first.stop(signal.SIGKILL)
        second = start_server(tmp_path, env={**env, "DASHBOARD_PORT": str(first.port)})
        try:
            me = requests.get(f"{second.url}/api/auth/me", headers=headers, timeout=5)
            assert me.status_code == 200 and me.json()["auth"] == "session"
            assert requests.get(f"{second.url}/api/auth/me", headers={"X-API-Key": key}, timeout=5).status_code == 200
            downloads = requests.get(f"{second.url}{BASE}/downloads", headers=headers, timeout=5).json()["downloads"]
            assert [(d["model_name"], d["status"]) for d in downloads] == [("big:70b", "error")]
            assert "interrupted" in downloads[0]["error"]
            assert (tmp_path / "data" / "dashboard.db").is_file()
        finally:
            second.stop()
    finally:
        first.stop(signal.SIGKILL)


def test_an_unusable_database_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    from tests.live import REPO

    (tmp_path / "run").mkdir()
    for url, says in [("postgresql+psycopg://nobody:secret-pw@127.0.0.1:9/none", "DATABASE_URL"),
                      ("mysql://x@y/z", "DATABASE_URL")]:
        env = server_env(tmp_path, port=5999, extra={"DATABASE_URL": url})
        result = subprocess.run([sys.executable, str(REPO / "app.py")], cwd=tmp_path / "run", env=env,
                                capture_output=True, text=True, timeout=30)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith("configuration error: DATABASE_URL") and says in lines[0]
        assert "secret-pw" not in result.stderr and "Traceback" not in result.stderr


def test_a_database_written_by_a_newer_version_is_refused(tmp_path):
    """A schema revision this code does not know stops the start-up with one reason, not a traceback."""
    import sqlite3

    from db import DatabaseStartupError, open_database

    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    open_database(url).dispose()
    with sqlite3.connect(tmp_path / "dashboard.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffff'")
    with pytest.raises(DatabaseStartupError, match="newer version|ffff"):
        open_database(url)
