"""Configuration: every variable typed and validated, one line per problem, before binding."""
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from pydantic import SecretStr

from auth.passwords import admin_password_hash, check_password, hash_password
from config import VARIABLES, Config, ConfigError, ensure_data_dir, load_config, parse_ollama_host, redis_url_given
from ollama_client.keep_alive import parse_keep_alive

REPO = Path(__file__).resolve().parent.parent
BASE = {"DASHBOARD_AUTH_USERNAME": "admin", "DASHBOARD_AUTH_PASSWORD": "correct-horse"}


def load(tmp_path, **env):
    values = dict(BASE, DASHBOARD_DATA_DIR=str(tmp_path / "data"))
    values.update(env)
    return load_config({k: v for k, v in values.items() if v is not None}, dotenv_path=None)


def test_defaults(tmp_path):
    config = load(tmp_path)
    assert config.auth_username == "admin"
    assert config.auth_password.get_secret_value() == "correct-horse" and config.auth_password_hash is None
    assert bcrypt.checkpw(b"correct-horse", admin_password_hash(config, rounds=4))
    assert (config.session_expiry_hours, config.host, config.port) == (24.0, "127.0.0.1", 5000)
    assert config.ollama_host == "http://localhost:11434"
    assert config.ollama_allowed_registries == ("registry.ollama.ai", "hf.co")
    assert config.ollama_load_keep_alive == -1
    assert config.vram_poll_interval_s == 2.0
    assert config.proxy_auth_enabled is False and config.proxy_auth_token is None
    assert config.max_proxy_request_size == 104857600 and config.proxy_timeout_s == 30.0
    assert config.cors_allowed_origins == () and config.log_level == "INFO"
    assert config.max_connections == 10000
    assert not (tmp_path / "data").exists()  # loading has no side effects; app.main creates it


def test_data_dir_is_created_before_binding(tmp_path):
    config = load(tmp_path, DASHBOARD_DATA_DIR=str(tmp_path / "a" / "b"))
    assert ensure_data_dir(config) is None and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    problem = ensure_data_dir(load(tmp_path, DASHBOARD_DATA_DIR=str(tmp_path / "file" / "data")))
    assert problem.startswith("DASHBOARD_DATA_DIR: cannot create ")


def test_plain_password_is_never_shown(tmp_path):
    config = load(tmp_path, PROXY_AUTH_ENABLED="true", PROXY_AUTH_TOKEN="0123456789abcdef")
    for text in (repr(config), str(config), config.model_dump_json()):
        assert "correct-horse" not in text and "0123456789abcdef" not in text
    assert isinstance(config.auth_password, SecretStr)


def test_password_is_read_raw(tmp_path):
    config = load(tmp_path, DASHBOARD_AUTH_PASSWORD="  spaced  ")
    assert config.auth_password.get_secret_value() == "  spaced  "


def test_hash_instead_of_password(tmp_path):
    hashed = bcrypt.hashpw(b"another-secret", bcrypt.gensalt(4)).decode()
    config = load(tmp_path, DASHBOARD_AUTH_PASSWORD=None, DASHBOARD_AUTH_PASSWORD_HASH=hashed)
    assert config.auth_password_hash == hashed.encode()
    assert admin_password_hash(config) == hashed.encode()  # given: used as is, never re-hashed


def test_admin_hash_is_made_once_at_app_creation_with_an_injectable_cost():
    config = Config(auth_username="admin", auth_password="correct-horse")
    hashed = admin_password_hash(config, rounds=4)
    assert hashed.startswith(b"$2b$04$") and check_password("correct-horse", hashed)
    assert not check_password("wrong-horse", hashed) and not check_password("x" * 100, hashed)
    assert hash_password("correct-horse", rounds=5).startswith(b"$2b$05$")


@pytest.mark.parametrize("env, variable", [
    ({"DASHBOARD_AUTH_USERNAME": ""}, "DASHBOARD_AUTH_USERNAME"),
    ({"DASHBOARD_AUTH_PASSWORD": ""}, "DASHBOARD_AUTH_PASSWORD"),
    ({"DASHBOARD_AUTH_PASSWORD": "short"}, "DASHBOARD_AUTH_PASSWORD"),
    ({"DASHBOARD_AUTH_PASSWORD": "x" * 73}, "DASHBOARD_AUTH_PASSWORD"),
    ({"DASHBOARD_AUTH_PASSWORD": "é" * 37}, "DASHBOARD_AUTH_PASSWORD"),
    ({"DASHBOARD_AUTH_PASSWORD": "password\udcff"}, "DASHBOARD_AUTH_PASSWORD"),  # a 0xFF byte in environ
    ({"DASHBOARD_AUTH_PASSWORD_HASH": "not-a-hash"}, "DASHBOARD_AUTH_PASSWORD_HASH"),
    ({"SESSION_EXPIRY_HOURS": "0"}, "SESSION_EXPIRY_HOURS"),
    ({"SESSION_EXPIRY_HOURS": "-1"}, "SESSION_EXPIRY_HOURS"),
    ({"SESSION_EXPIRY_HOURS": "soon"}, "SESSION_EXPIRY_HOURS"),
    ({"SESSION_EXPIRY_HOURS": "nan"}, "SESSION_EXPIRY_HOURS"),
    ({"DASHBOARD_HOST": "not a host"}, "DASHBOARD_HOST"),
    ({"DASHBOARD_HOST": "999.1.1.1"}, "DASHBOARD_HOST"),
    ({"DASHBOARD_HOST": "1.2.3"}, "DASHBOARD_HOST"),
    ({"DASHBOARD_PORT": "0"}, "DASHBOARD_PORT"),
    ({"DASHBOARD_PORT": "70000"}, "DASHBOARD_PORT"),
    ({"DASHBOARD_PORT": "http"}, "DASHBOARD_PORT"),
    ({"OLLAMA_HOST": "ftp://gpu-box"}, "OLLAMA_HOST"),
    ({"OLLAMA_HOST": "gpu-box:99999"}, "OLLAMA_HOST"),
    ({"OLLAMA_ALLOWED_REGISTRIES": "bad registry"}, "OLLAMA_ALLOWED_REGISTRIES"),
    ({"OLLAMA_LOAD_KEEP_ALIVE": "forever"}, "OLLAMA_LOAD_KEEP_ALIVE"),
    ({"VRAM_POLL_INTERVAL_SECONDS": "0.05"}, "VRAM_POLL_INTERVAL_SECONDS"),
    ({"VRAM_POLL_INTERVAL_SECONDS": "3601"}, "VRAM_POLL_INTERVAL_SECONDS"),
    ({"PROXY_AUTH_ENABLED": "maybe"}, "PROXY_AUTH_ENABLED"),
    ({"PROXY_AUTH_ENABLED": "true"}, "PROXY_AUTH_TOKEN"),
    ({"PROXY_AUTH_ENABLED": "true", "PROXY_AUTH_TOKEN": "too-short"}, "PROXY_AUTH_TOKEN"),
    ({"MAX_PROXY_REQUEST_SIZE": "-5"}, "MAX_PROXY_REQUEST_SIZE"),
    ({"MAX_PROXY_REQUEST_SIZE": "1e6"}, "MAX_PROXY_REQUEST_SIZE"),
    ({"PROXY_TIMEOUT_SECONDS": "0"}, "PROXY_TIMEOUT_SECONDS"),
    ({"CORS_ALLOWED_ORIGINS": "*"}, "CORS_ALLOWED_ORIGINS"),
    ({"CORS_ALLOWED_ORIGINS": "http://ok.lan,ftp://bad"}, "CORS_ALLOWED_ORIGINS"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"DASHBOARD_MAX_CONNECTIONS": "15"}, "DASHBOARD_MAX_CONNECTIONS"),
    ({"PROXY_AUTH_TOKEN": "has a space in it!"}, "PROXY_AUTH_TOKEN"),
    ({"DASHBOARD_AUTH_USERNAME": "x" * 129}, "DASHBOARD_AUTH_USERNAME"),
])
def test_each_invalid_variable_is_named(tmp_path, env, variable):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **env)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{variable}: ")
    assert "Input should" not in info.value.problems[0]  # our words, not pydantic's


def test_all_problems_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, DASHBOARD_AUTH_USERNAME="", DASHBOARD_PORT="x", LOG_LEVEL="x")
    assert [p.split(":")[0] for p in info.value.problems] == [
        "DASHBOARD_AUTH_USERNAME", "DASHBOARD_PORT", "LOG_LEVEL"]


def test_typed_values(tmp_path):
    config = load(tmp_path, SESSION_EXPIRY_HOURS="0.5", DASHBOARD_HOST="0.0.0.0", DASHBOARD_PORT="8080",
                  OLLAMA_HOST="gpu-box:11500", OLLAMA_ALLOWED_REGISTRIES=" registry.ollama.ai , HF.co,",
                  OLLAMA_LOAD_KEEP_ALIVE="10m", VRAM_POLL_INTERVAL_SECONDS="0.1", PROXY_AUTH_ENABLED="TRUE",
                  PROXY_AUTH_TOKEN="0123456789abcdef", MAX_PROXY_REQUEST_SIZE="2048",
                  PROXY_TIMEOUT_SECONDS="2.5", CORS_ALLOWED_ORIGINS="http://a.lan:3000, https://b.lan",
                  LOG_LEVEL="debug")
    assert config.session_expiry_s == 1800
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    assert config.ollama_host == "http://gpu-box:11500"
    assert config.ollama_allowed_registries == ("registry.ollama.ai", "hf.co")
    assert config.ollama_load_keep_alive == "10m"
    assert config.vram_poll_interval_s == 0.1
    assert config.proxy_auth_enabled and config.proxy_auth_token == "0123456789abcdef"
    assert (config.max_proxy_request_size, config.proxy_timeout_s) == (2048, 2.5)
    assert config.cors_allowed_origins == ("http://a.lan:3000", "https://b.lan")
    assert config.log_level == "DEBUG"


def test_dotenv_is_read_beneath_the_environment(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DASHBOARD_AUTH_USERNAME=from-file\nDASHBOARD_AUTH_PASSWORD=file-password\n"
                      "DASHBOARD_PORT=6000\n")
    config = load_config({"DASHBOARD_PORT": "7000", "DASHBOARD_DATA_DIR": str(tmp_path / "d")},
                         dotenv_path=dotenv)
    assert config.auth_username == "from-file" and config.port == 7000


@pytest.mark.parametrize(("environ", "dotenv", "given"), [
    ({}, None, False),
    ({"REDIS_URL": "  "}, None, False),                    # blank is unset, as load_config reads it
    ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, None, True),
    ({}, "REDIS_URL=redis://cache:6379/0\n", True),        # from .env
    ({"REDIS_URL": ""}, "REDIS_URL=redis://cache:6379/0\n", False),  # the environment wins
    ({}, b"REDIS_URL=\xff\n", True),                     # unreadable: imported as usual, reported later
])
def test_redis_url_given_reads_where_load_config_reads(tmp_path, environ, dotenv, given):
    path = tmp_path / ".env"
    if isinstance(dotenv, bytes):
        path.write_bytes(dotenv)
    elif dotenv is not None:
        path.write_text(dotenv)
    assert redis_url_given(environ, path) is given


def test_dotenv_that_is_not_utf8_is_a_configuration_error(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(b"DASHBOARD_AUTH_USERNAME=x\xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(dict(BASE, DASHBOARD_DATA_DIR=str(tmp_path / "d")), dotenv_path=dotenv)
    assert info.value.problems == [f"{dotenv}: cannot read it: it is not UTF-8 text"]


@pytest.mark.parametrize("raw, url", [
    ("", "http://127.0.0.1:11434"),
    ("localhost", "http://localhost:11434"),
    ("http://localhost:11434", "http://localhost:11434"),
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("0.0.0.0:11434", "http://127.0.0.1:11434"),
    ("https://ollama.lan", "https://ollama.lan:443"),
    ("http://gpu", "http://gpu:80"),
    ("http://gpu:1234/prefix/", "http://gpu:1234/prefix"),
    ("[::1]:11434", "http://[::1]:11434"),
])
def test_ollama_host_parsed_as_ollama_does(raw, url):
    assert parse_ollama_host(raw) == url


@pytest.mark.parametrize("raw, value", [("-1", -1), ("0", 0), ("300", 300), ("1.5", 1.5), ("5m", "5m"),
                                        ("1h30m", "1h30m"), ("-1s", "-1s"), (60, 60)])
def test_keep_alive(raw, value):
    assert parse_keep_alive(raw) == value


@pytest.mark.parametrize("raw", ["", "5 minutes", "m5", True, float("inf")])
def test_keep_alive_rejects(raw):
    with pytest.raises(ValueError):
        parse_keep_alive(raw)


def test_server_refuses_to_start_with_bad_config(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DASHBOARD_AUTH_USERNAME": "admin", "DASHBOARD_AUTH_PASSWORD": "short",
           "DASHBOARD_PORT": "not-a-port", "VRAM_POLL_INTERVAL_SECONDS": "0"}
    result = subprocess.run([sys.executable, str(REPO / "app.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "DASHBOARD_AUTH_PASSWORD", "DASHBOARD_PORT", "VRAM_POLL_INTERVAL_SECONDS"]
    assert "Traceback" not in result.stderr + result.stdout


# The variables of the contract's "Running" table that exist today, plus the HTTP server's limits
# (not in the table: DASHBOARD_MAX_CONNECTIONS and the five after it, README "Security limits").
CONTRACT_VARIABLES = [
    "DASHBOARD_AUTH_USERNAME", "DASHBOARD_AUTH_PASSWORD", "DASHBOARD_AUTH_PASSWORD_HASH", "SESSION_EXPIRY_HOURS",
    "DASHBOARD_HOST", "DASHBOARD_PORT", "DASHBOARD_DATA_DIR", "OLLAMA_HOST", "OLLAMA_ALLOWED_REGISTRIES",
    "OLLAMA_LOAD_KEEP_ALIVE", "VRAM_POLL_INTERVAL_SECONDS", "PROXY_AUTH_ENABLED", "PROXY_AUTH_TOKEN",
    "MAX_PROXY_REQUEST_SIZE", "PROXY_TIMEOUT_SECONDS", "CORS_ALLOWED_ORIGINS", "LOG_LEVEL",
    "DATABASE_URL", "AUDIT_RETENTION_DAYS", "REDIS_URL", "DASHBOARD_NODE_NAME", "DASHBOARD_PUBLIC_URL",
    "ALERT_VRAM_PERCENT", "ALERT_TEMPERATURE_C", "ALERT_FOR_SECONDS", "ALERT_WEBHOOK_URL", "METRICS_AUTH",
    "DASHBOARD_MAX_CONNECTIONS", "DASHBOARD_MAX_CONNECTIONS_PER_CLIENT", "DASHBOARD_HEADER_TIMEOUT_SECONDS",
    "DASHBOARD_KEEPALIVE_TIMEOUT_SECONDS", "DASHBOARD_BODY_TIMEOUT_SECONDS", "DASHBOARD_ALLOWED_HOSTS",
]


def test_each_variable_is_declared_once():
    aliases = [field.alias for field in Config.model_fields.values() if field.alias]
    assert sorted(aliases) == sorted(CONTRACT_VARIABLES)
    assert set(VARIABLES) == set(CONTRACT_VARIABLES)


def test_env_example_lists_every_variable_with_its_default(tmp_path):
    listed = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        name, sep, value = line.lstrip("# ").partition("=")
        if sep and name in VARIABLES:
            listed[name] = value
    assert sorted(listed) == sorted(CONTRACT_VARIABLES)
    defaults = load(tmp_path)
    for name, value in listed.items():
        if name.startswith("DASHBOARD_AUTH_"):
            continue  # required, or an example to fill in
        field = VARIABLES[name]
        example = load(tmp_path, **{name: value}) if name != "DASHBOARD_DATA_DIR" else Config(
            auth_username="admin", auth_password="correct-horse", data_dir=value)
        expected = defaults if name != "DASHBOARD_DATA_DIR" else Config(auth_username="admin", auth_password="x" * 8)
        assert getattr(example, field) == getattr(expected, field), name


def test_blank_values_mean_the_default(tmp_path):
    config = load(tmp_path, DASHBOARD_HOST="  ", OLLAMA_HOST="", CORS_ALLOWED_ORIGINS=" ", PROXY_AUTH_TOKEN="")
    assert (config.host, config.ollama_host) == ("127.0.0.1", "http://localhost:11434")
    assert config.cors_allowed_origins == () and config.proxy_auth_token is None


def test_a_valid_hash_wins_over_the_password(tmp_path):
    hashed = bcrypt.hashpw(b"another-secret", bcrypt.gensalt(4)).decode()
    config = load(tmp_path, DASHBOARD_AUTH_PASSWORD="short", DASHBOARD_AUTH_PASSWORD_HASH=hashed)
    assert config.auth_password is None and config.auth_password_hash == hashed.encode()


def test_config_in_code_ignores_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DASHBOARD_PORT", "7000")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("LOG_LEVEL=DEBUG\n")
    config = Config(auth_username="admin", auth_password_hash=hash_password("correct-horse", rounds=4))
    assert (config.port, config.log_level) == (5000, "INFO")
    assert Config.model_validate({"DASHBOARD_AUTH_USERNAME": "admin", "DASHBOARD_AUTH_PASSWORD": "x" * 8,
                                  "DASHBOARD_PORT": "6000"}).port == 6000


def test_config_is_frozen(tmp_path):
    config = load(tmp_path)
    with pytest.raises(ValueError):
        config.port = 1
