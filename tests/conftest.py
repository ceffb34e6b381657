"""Fixtures: app -> client -> auth, as in flaskr; fakes sit at the system boundary."""
import warnings

with warnings.catch_warnings():
    # pytest.ini filters EventletDeprecationWarning by class; this import runs before that applies.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet

# As in `python app.py`: patch before Flask, requests or the fakes import socket/threading.
eventlet.monkey_patch()

pytest_plugins = ["tests.fakes.fake_nvml.fixtures", "tests.fakes.fake_ollama_fixtures", "tests.server_fixtures"]

import time  # noqa: E402

import pytest  # noqa: E402

import auth.passwords  # noqa: E402
from config import Config  # noqa: E402

from tests.credentials import PASSWORD, PASSWORD_HASH, USERNAME  # noqa: E402


def make_config(tmp_path, **overrides) -> Config:
    """Return a valid Config for tests; keyword arguments override fields."""
    values = dict(auth_username=USERNAME, auth_password_hash=PASSWORD_HASH, data_dir=tmp_path / "data",
                  ollama_host="http://127.0.0.1:9", vram_poll_interval_s=2.0)
    values.update(overrides)
    return Config(**values)


class Clock:
    """A clock tests move by hand instead of sleeping."""

    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def config_overrides(request):
    """Config fields to change: parametrize this fixture (directly or indirect=True) or override it."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def config(tmp_path, config_overrides):
    return make_config(tmp_path, **config_overrides)


@pytest.fixture
def nvml_reader(fake_nvml):
    """The real NVML reader over the fake libnvidia-ml (two GPUs); modules may override it."""
    from vram.nvml import NvmlReader

    reader = NvmlReader()
    yield reader
    reader.shutdown()


# Passwords that tests set through the API are hashed at cost 4 too.
auth.passwords.BCRYPT_ROUNDS = 4


@pytest.fixture(scope="session")
def migrated_sqlite():
    """A SQLite file migrated to the newest schema once; each test gets a copy (a fresh database)."""
    from tests.live import migrated_sqlite_template

    return migrated_sqlite_template()


@pytest.fixture
def database_url(tmp_path, migrated_sqlite):
    """The database an app test runs on: a fresh copy of the migrated SQLite file."""
    import shutil

    path = tmp_path / "dashboard.db"
    shutil.copyfile(migrated_sqlite, path)
    return f"sqlite:///{path}"


@pytest.fixture
def database(database_url):
    from db import Database

    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def app(config, clock, nvml_reader, database):
    from app import create_app

    app = create_app(config, nvml_reader=nvml_reader, database=database, clock=clock)
    app.config["TESTING"] = True
    yield app
    app.extensions["dashboard"].shutdown()


@pytest.fixture
def services(app):
    return app.extensions["dashboard"]


@pytest.fixture
def client(app):
    return app.test_client()


class AuthActions:
    """Log in through the real route and build Authorization headers."""

    def __init__(self, client):
        self._client = client
        self.token = None

    def login(self, username=USERNAME, password=PASSWORD):
        return self._client.post("/api/auth/login", json={"username": username, "password": password})

    def headers(self) -> dict:
        if self.token is None:
            response = self.login()
            assert response.status_code == 200, response.get_json()
            self.token = response.get_json()["token"]
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def api(client, auth):
    """Call a model route with credentials: api("post", "load", json=...)."""
    headers = auth.headers()

    def call(method, route, **kwargs):
        return getattr(client, method)(f"/api/models/ollama/{route}", headers=headers, **kwargs)

    return call
