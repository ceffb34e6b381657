"""The one place that reads the environment (and `.env` beneath it) into a typed Config."""
from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import bcrypt
from dotenv import dotenv_values

DEFAULT_OLLAMA_HOST = "http://localhost:11434"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# bcrypt hashes are "$2b$" (or the older "$2a$"/"$2y$"), a two-digit cost, "$", then 53 chars.
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# Ollama's duration syntax for keep_alive: a (possibly negative) number of seconds, or a Go
# duration such as "5m", "1h30m", "-1s".
# ASCII digits only: \d would pass "٥m" on to Ollama, which cannot parse it.
_GO_DURATION = re.compile(r"^-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


class ConfigError(Exception):
    """Raised with one human-readable line per invalid variable."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    """Every setting of the server, typed and validated."""

    auth_username: str
    auth_password_hash: bytes = field(repr=False)
    session_expiry_hours: float = 24.0
    host: str = "127.0.0.1"
    port: int = 5000
    data_dir: Path = Path("./data")
    ollama_host: str = "http://127.0.0.1:11434"
    ollama_allowed_registries: tuple[str, ...] = ("registry.ollama.ai", "hf.co")
    ollama_load_keep_alive: str | int = -1
    vram_poll_interval_s: float = 2.0
    proxy_auth_enabled: bool = False
    proxy_auth_token: str | None = field(default=None, repr=False)
    max_proxy_request_size: int = 104857600
    proxy_timeout_s: float = 30.0
    cors_allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    max_connections: int = 10000
    max_api_body_bytes: int = 1024 * 1024
    login_max_failures: int = 5
    login_window_s: int = 15 * 60

    @property
    def session_expiry_s(self) -> float:
        return self.session_expiry_hours * 3600.0


def parse_ollama_host(raw: str) -> str:
    """Return the base URL for OLLAMA_HOST, parsed as Ollama's envconfig.Host parses it.

    >>> parse_ollama_host("")
    'http://127.0.0.1:11434'
    >>> parse_ollama_host("gpu-box:11500")
    'http://gpu-box:11500'
    >>> parse_ollama_host("https://example.com/ollama")
    'https://example.com:443/ollama'
    >>> parse_ollama_host("0.0.0.0")
    'http://127.0.0.1:11434'
    """
    s = raw.strip()
    default_port = "11434"
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    else:
        raise ValueError(f"scheme must be http or https, not {scheme!r}")
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport)
    if host is None:
        host, port = "127.0.0.1", default_port
        bare = hostport.strip("[]")
        if bare:
            host = bare
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"invalid port {port!r}")
    # 0.0.0.0 / :: mean "all interfaces" for a server; a client reaches them on loopback.
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if not re.fullmatch(r"[A-Za-z0-9._:\-]+", host):
        raise ValueError(f"invalid host {host!r}")
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"{scheme}://{netloc}"
    if path:
        url += "/" + path.rstrip("/")
    return url.rstrip("/")


def _split_host_port(hostport: str) -> tuple[str | None, str]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end != -1 and hostport[end + 1 : end + 2] == ":":
            return hostport[1:end], hostport[end + 2 :]
        return None, ""
    if hostport.count(":") == 1:
        host, port = hostport.split(":")
        return host, port
    return None, ""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be true or false, not {raw!r}")


def _parse_number(raw: str, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {raw!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"must be {'greater than' if low_open else 'at least'} {low:g}, not {raw}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high:g}, not {raw}")
    return value


def _parse_int(raw: str, *, low: int, high: int | None = None) -> int:
    if not re.fullmatch(r"\s*\d+\s*", raw):
        raise ValueError(f"must be a whole number, not {raw!r}")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"must be {bound}, not {value}")
    return value


def parse_keep_alive(raw: str | int | float) -> str | int:
    """Validate Ollama's keep_alive: seconds as a number, or a Go duration string.

    >>> parse_keep_alive("-1"), parse_keep_alive("5m"), parse_keep_alive(300)
    (-1, '5m', 300)
    """
    if isinstance(raw, bool):
        raise ValueError("must be a duration such as 5m, 1h, or seconds (-1 = forever)")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise ValueError("must be a finite number of seconds")
        return int(raw) if float(raw).is_integer() else raw
    text = raw.strip()
    if _NUMBER.match(text):
        number = float(text)
        return int(number) if number.is_integer() else number
    if _GO_DURATION.match(text):
        return text
    raise ValueError(f"must be a duration such as 5m, 1h, or seconds (-1 = forever), not {raw!r}")


def _parse_origins(raw: str) -> tuple[str, ...]:
    origins = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin like http://host:port")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(origins)


def _parse_registries(raw: str) -> tuple[str, ...]:
    registries = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    for registry in registries:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.\-]*[a-z0-9])?(:\d{1,5})?", registry):
            raise ValueError(f"{registry!r} is not a registry host name")
    return registries


def hash_password(password: str, rounds: int = 12) -> bytes:
    """Hash a password with bcrypt (used once at start-up, and by tests with low cost)."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds))


def load_config(environ: Mapping[str, str] | None = None, dotenv_path: str | os.PathLike | None = ".env",
                *, bcrypt_rounds: int = 12) -> Config:
    """Read the environment over `.env` into a Config, or raise ConfigError listing every problem."""
    env: dict[str, str] = {}
    problems: list[str] = []
    if dotenv_path is not None and Path(dotenv_path).is_file():
        try:
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            problems.append(f"{dotenv_path}: cannot read it: {reason}")
    env.update(os.environ if environ is None else environ)

    values: dict[str, object] = {}

    def get(name: str, default: str = "") -> str:
        return env.get(name, default).strip()

    def read(name: str, key: str, parse, default: str) -> None:
        raw = get(name, default)
        try:
            values[key] = parse(raw if raw != "" else default)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")

    username = get("DASHBOARD_AUTH_USERNAME")
    if not username:
        problems.append("DASHBOARD_AUTH_USERNAME: required (the administrator's user name)")
    elif len(username) > 128 or any(not ch.isprintable() for ch in username):
        problems.append("DASHBOARD_AUTH_USERNAME: must be at most 128 printable characters")

    # The password is read raw: leading or trailing spaces are part of it.
    password = env.get("DASHBOARD_AUTH_PASSWORD", "")
    password_hash = get("DASHBOARD_AUTH_PASSWORD_HASH")
    hashed: bytes | None = None
    if password_hash:
        if not _BCRYPT_HASH.match(password_hash):
            problems.append("DASHBOARD_AUTH_PASSWORD_HASH: must be a bcrypt hash ($2b$12$ followed by 53 characters)")
        else:
            hashed = password_hash.encode("ascii")
    elif not password:
        problems.append("DASHBOARD_AUTH_PASSWORD: required unless DASHBOARD_AUTH_PASSWORD_HASH is set")
    elif len(password) < 8:
        problems.append("DASHBOARD_AUTH_PASSWORD: must be at least 8 characters")
    elif not _is_utf8(password):
        # Bytes that are not UTF-8 reach os.environ as surrogates; no JSON login could match them.
        problems.append("DASHBOARD_AUTH_PASSWORD: must be UTF-8 text")
    elif len(password.encode("utf-8")) > 72:
        problems.append("DASHBOARD_AUTH_PASSWORD: must be at most 72 bytes (bcrypt ignores the rest)")

    read("SESSION_EXPIRY_HOURS", "session_expiry_hours",
         lambda r: _parse_number(r, low=0, low_open=True, high=24 * 365), "24")
    read("DASHBOARD_HOST", "host", _parse_bind_host, "127.0.0.1")
    read("DASHBOARD_PORT", "port", lambda r: _parse_int(r, low=1, high=65535), "5000")
    read("DASHBOARD_DATA_DIR", "data_dir", Path, "./data")
    read("OLLAMA_HOST", "ollama_host", parse_ollama_host, DEFAULT_OLLAMA_HOST)
    read("OLLAMA_ALLOWED_REGISTRIES", "ollama_allowed_registries", _parse_registries,
         "registry.ollama.ai,hf.co")
    read("OLLAMA_LOAD_KEEP_ALIVE", "ollama_load_keep_alive", parse_keep_alive, "-1")
    read("VRAM_POLL_INTERVAL_SECONDS", "vram_poll_interval_s",
         lambda r: _parse_number(r, low=0.1, high=3600), "2")
    read("PROXY_AUTH_ENABLED", "proxy_auth_enabled", _parse_bool, "false")
    read("MAX_PROXY_REQUEST_SIZE", "max_proxy_request_size", lambda r: _parse_int(r, low=1), "104857600")
    read("PROXY_TIMEOUT_SECONDS", "proxy_timeout_s",
         lambda r: _parse_number(r, low=0, low_open=True, high=86400), "30")
    read("CORS_ALLOWED_ORIGINS", "cors_allowed_origins", _parse_origins, "")
    read("LOG_LEVEL", "log_level", _parse_log_level, "INFO")
    read("DASHBOARD_MAX_CONNECTIONS", "max_connections", lambda r: _parse_int(r, low=16), "10000")

    token = get("PROXY_AUTH_TOKEN") or None
    if values.get("proxy_auth_enabled"):
        if not token:
            problems.append("PROXY_AUTH_TOKEN: required when PROXY_AUTH_ENABLED=true")
        elif len(token) < 16:
            problems.append("PROXY_AUTH_TOKEN: must be at least 16 characters")
    if token and (any(not ch.isprintable() or ch.isspace() for ch in token)):
        problems.append("PROXY_AUTH_TOKEN: must not contain spaces or control characters")

    data_dir = values.get("data_dir")
    if isinstance(data_dir, Path) and not problems:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"DASHBOARD_DATA_DIR: cannot create {str(data_dir)!r}: {exc.strerror}")

    if problems:
        raise ConfigError(problems)
    if hashed is None:
        # Hash at start-up so the plain password is never kept in memory past this point.
        hashed = hash_password(password, rounds=bcrypt_rounds)
    return Config(auth_username=username, auth_password_hash=hashed, proxy_auth_token=token, **values)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_bind_host(raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
        return raw
    except ValueError:
        pass
    if re.fullmatch(r"[\d.]+", raw):
        # Only digits and dots is an IPv4 address or nothing ("999.1.1.1" would be looked up as a
        # name and fail only when the port is bound; "1.2.3" would bind 1.2.0.3).
        raise ValueError(f"{raw!r} is not a valid IPv4 address")
    if raw == "localhost" or re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?", raw):
        return raw
    raise ValueError(f"must be an IP address or host name, not {raw!r}")


def _parse_log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return level
