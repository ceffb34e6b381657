"""The one place that reads the environment (and `.env` beneath it) into a typed Config.

Each variable of the contract's "Running" table is one field below: its name (the alias), its
type, its one default and its bounds. Adding a variable is adding a line.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Mapping
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from ollama_client.keep_alive import parse_keep_alive

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# bcrypt hashes are "$2b$" (or the older "$2a$"/"$2y$"), a two-digit cost, "$", then 53 chars.
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# Read raw: leading or trailing spaces are part of a password.
_RAW_VARIABLES = ("DASHBOARD_AUTH_PASSWORD", "auth_password")


class ConfigError(Exception):
    """Raised with one human-readable line per invalid variable."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


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


def _parse_bool(raw: Any) -> bool:
    """Accept 1/true/yes/on and 0/false/no/off, in any case.

    >>> _parse_bool("TRUE"), _parse_bool("off"), _parse_bool(True)
    (True, False, True)
    """
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be true or false, not {raw!r}")


def _items(raw: Any) -> list[str]:
    """Split a comma-separated variable (or take a list or tuple as given by code), dropping blanks."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    return [part.strip() for part in parts if part.strip()]


def _parse_origins(raw: Any) -> tuple[str, ...]:
    """Return the CORS origins as scheme://host[:port].

    >>> _parse_origins("http://a.lan:3000, https://b.lan/")
    ('http://a.lan:3000', 'https://b.lan')
    """
    origins = []
    for item in _items(raw):
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin like http://host:port")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(origins)


def _parse_registries(raw: Any) -> tuple[str, ...]:
    """Return the registry host names, lower-cased.

    >>> _parse_registries(" registry.ollama.ai , HF.co,")
    ('registry.ollama.ai', 'hf.co')
    """
    registries = tuple(item.lower() for item in _items(raw))
    for registry in registries:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.\-]*[a-z0-9])?(:\d{1,5})?", registry):
            raise ValueError(f"{registry!r} is not a registry host name")
    return registries


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


def _parse_password_hash(raw: str | bytes) -> bytes:
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if not _BCRYPT_HASH.match(text):
        raise ValueError("must be a bcrypt hash ($2b$12$ followed by 53 characters)")
    return text.encode("ascii")


def _parse_username(raw: str) -> str:
    if len(raw) > 128 or any(not ch.isprintable() for ch in raw):
        raise ValueError("must be at most 128 printable characters")
    return raw


def _parse_database_url(raw: Any) -> str | None:
    """An SQLAlchemy URL of SQLite or PostgreSQL (psycopg 3); empty = SQLite under DASHBOARD_DATA_DIR."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    text = str(raw).strip()
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "postgresql":
        return "postgresql+psycopg://" + text.split("://", 1)[1]  # the driver this server ships with
    if scheme not in ("sqlite", "postgresql+psycopg"):
        raise ValueError("must be sqlite:///<path> or postgresql+psycopg://user:password@host/db")
    return text



def _parse_allowed_hosts(raw: Any) -> tuple[str, ...]:
    """Return the Host names (or addresses) requests may name, lower-cased; `*` allows any.

    >>> _parse_allowed_hosts("Dash.LAN, 192.168.1.5,[::1]")
    ('dash.lan', '192.168.1.5', '::1')
    """
    hosts = []
    for item in _items(raw):
        host = item.lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if host != "*" and not re.fullmatch(r"[a-z0-9_]([a-z0-9_.\-]*[a-z0-9_])?|[0-9a-f:.]+", host):
            raise ValueError(f"{item!r} is not a host name or address (no port, no scheme)")
        hosts.append(host)
    return tuple(hosts)


NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")


def _parse_redis_url(raw: Any) -> str | None:
    """redis://[user:password@]host[:port][/db] or rediss://…; empty = no fleet.

    >>> _parse_redis_url("redis://127.0.0.1:6379/0"), _parse_redis_url(" ")
    ('redis://127.0.0.1:6379/0', None)
    """
    if raw is None or not str(raw).strip():
        return None
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be redis://host:port/db or rediss://host:port/db")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError("has an invalid port") from None
    return text


def _parse_node_name(raw: Any) -> str:
    """A fleet node's name: letters, digits, `.`, `_`, `-`; 1-63.

    >>> _parse_node_name("gpu-box_2.lan")
    'gpu-box_2.lan'
    """
    text = str(raw)
    if not NODE_NAME.fullmatch(text):
        raise ValueError(f"must be 1-63 letters, digits, '.', '_' or '-', not {text!r}"
                         + (" (the host name; set DASHBOARD_NODE_NAME)" if text == socket.gethostname() else ""))
    return text


def _parse_public_url(raw: Any) -> str | None:
    """Where other servers reach this one: http(s)://host[:port][/prefix], without a trailing slash.

    >>> _parse_public_url("http://gpu-box-2:5000/")
    'http://gpu-box-2:5000'
    """
    if raw is None or not str(raw).strip():
        return None
    text = str(raw).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{text!r} is not a URL like http://gpu-box-2:5000")
    try:
        parts.port  # noqa: B018
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return text


def parse_webhook_url(raw: Any) -> str | None:
    """An http(s) URL with a host, or empty (None): where alert transitions are POSTed.

    >>> parse_webhook_url("https://hooks.example.com/x?y=1"), parse_webhook_url("")
    ('https://hooks.example.com/x?y=1', None)
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise ValueError("must be an http:// or https:// URL, or empty")
    text = raw.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{text!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, or empty")
    if len(text) > 2000 or any(not ch.isprintable() or ch.isspace() for ch in text):
        raise ValueError("must be at most 2000 characters without spaces or control characters")
    return text


OllamaHost = Annotated[str, BeforeValidator(parse_ollama_host)]
RedisUrl = Annotated[str | None, BeforeValidator(_parse_redis_url)]
NodeName = Annotated[str, BeforeValidator(_parse_node_name)]
PublicUrl = Annotated[str | None, BeforeValidator(_parse_public_url)]
WebhookUrl = Annotated[str | None, BeforeValidator(parse_webhook_url)]
DatabaseUrl = Annotated[str | None, BeforeValidator(_parse_database_url)]
AllowedHosts = Annotated[tuple[str, ...], BeforeValidator(_parse_allowed_hosts)]
BindHost = Annotated[str, BeforeValidator(_parse_bind_host)]
Registries = Annotated[tuple[str, ...], BeforeValidator(_parse_registries)]
Origins = Annotated[tuple[str, ...], BeforeValidator(_parse_origins)]
KeepAlive = Annotated[str | int | float, BeforeValidator(parse_keep_alive)]
Bool = Annotated[bool, BeforeValidator(_parse_bool)]
LogLevel = Annotated[str, BeforeValidator(_parse_log_level)]
PasswordHash = Annotated[bytes, BeforeValidator(_parse_password_hash)]
UserName = Annotated[str, BeforeValidator(_parse_username)]
# Kept out of repr() and of model_dump(): the log and any dump of the settings.
_SECRET = {"repr": False, "exclude": True}


class Config(BaseModel):
    """Every setting of the server, typed and validated.

    Build one from the environment with load_config(), or in code by field name:
    Config(auth_username="admin", auth_password_hash=..., port=8080). It takes only the values
    handed in (load_config() reads the environment and `.env`), so Config(...) in a test never
    picks up the developer's shell or `.env`. A plain pydantic model: pydantic-settings, which
    reads sources of its own, was used with all of them turned off, and cost 5.2 MB of every
    server's memory for its importing alone (BENCHMARKS.md, section 4).
    """

    # validate_default: a default is written as the variable would be ("registry.ollama.ai,hf.co")
    # and parsed like it; the password and token rules also run when those are unset.
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore",
                                      allow_inf_nan=False, validate_default=True)

    # The variable as named in the contract; its type; its one default (the contract's); bounds.
    auth_username: UserName = Field(alias="DASHBOARD_AUTH_USERNAME", description="the administrator's user name")
    # Before the password: the password's validator reads whether a (valid) hash was given.
    auth_password_hash: PasswordHash | None = Field(None, alias="DASHBOARD_AUTH_PASSWORD_HASH", **_SECRET)
    auth_password: SecretStr | None = Field(None, alias="DASHBOARD_AUTH_PASSWORD")
    session_expiry_hours: float = Field(24.0, alias="SESSION_EXPIRY_HOURS", gt=0, le=24 * 365)
    host: BindHost = Field("127.0.0.1", alias="DASHBOARD_HOST")
    port: int = Field(5000, alias="DASHBOARD_PORT", ge=1, le=65535)
    data_dir: Path = Field(Path("./data"), alias="DASHBOARD_DATA_DIR")
    ollama_host: OllamaHost = Field("http://localhost:11434", alias="OLLAMA_HOST")
    ollama_allowed_registries: Registries = Field("registry.ollama.ai,hf.co", alias="OLLAMA_ALLOWED_REGISTRIES")
    ollama_load_keep_alive: KeepAlive = Field("-1", alias="OLLAMA_LOAD_KEEP_ALIVE")
    vram_poll_interval_s: float = Field(2.0, alias="VRAM_POLL_INTERVAL_SECONDS", ge=0.1, le=3600)
    proxy_auth_enabled: Bool = Field(False, alias="PROXY_AUTH_ENABLED")
    proxy_auth_token: str | None = Field(None, alias="PROXY_AUTH_TOKEN", **_SECRET)
    max_proxy_request_size: int = Field(104857600, alias="MAX_PROXY_REQUEST_SIZE", ge=1)
    proxy_timeout_s: float = Field(30.0, alias="PROXY_TIMEOUT_SECONDS", gt=0, le=86400)
    cors_allowed_origins: Origins = Field((), alias="CORS_ALLOWED_ORIGINS")
    log_level: LogLevel = Field("INFO", alias="LOG_LEVEL")
    max_connections: int = Field(10000, alias="DASHBOARD_MAX_CONNECTIONS", ge=16)
    database_url: DatabaseUrl = Field(None, alias="DATABASE_URL", **_SECRET)
    audit_retention_days: int = Field(90, alias="AUDIT_RETENTION_DAYS", ge=1, le=36500)
    max_connections_per_client: int = Field(256, alias="DASHBOARD_MAX_CONNECTIONS_PER_CLIENT", ge=1)
    header_timeout_s: float = Field(10.0, alias="DASHBOARD_HEADER_TIMEOUT_SECONDS", gt=0, le=3600)
    keepalive_timeout_s: float = Field(75.0, alias="DASHBOARD_KEEPALIVE_TIMEOUT_SECONDS", gt=0, le=3600)
    body_timeout_s: float = Field(30.0, alias="DASHBOARD_BODY_TIMEOUT_SECONDS", gt=0, le=3600)
    allowed_hosts: AllowedHosts = Field((), alias="DASHBOARD_ALLOWED_HOSTS")
    # The fleet (fleet/): REDIS_URL before DASHBOARD_PUBLIC_URL, whose validator reads it.
    redis_url: RedisUrl = Field(None, alias="REDIS_URL", **_SECRET)
    node_name: NodeName = Field(default_factory=socket.gethostname, alias="DASHBOARD_NODE_NAME")
    public_url: PublicUrl = Field(None, alias="DASHBOARD_PUBLIC_URL")
    alert_vram_percent: float = Field(90.0, alias="ALERT_VRAM_PERCENT", ge=1, le=100)
    alert_temperature_c: float = Field(85.0, alias="ALERT_TEMPERATURE_C", ge=1, le=150)
    alert_for_seconds: float = Field(10.0, alias="ALERT_FOR_SECONDS", ge=0, le=86400)
    alert_webhook_url: WebhookUrl = Field(None, alias="ALERT_WEBHOOK_URL", **_SECRET)  # may hold a token
    metrics_auth: Bool = Field(True, alias="METRICS_AUTH")

    # Not variables: fixed by the contract, fields so that tests can change them.
    max_api_body_bytes: int = 1024 * 1024
    login_max_failures: int = 5          # per client address, in login_window_s
    login_max_user_failures: int = 20    # per user name, across all addresses
    login_window_s: int = 15 * 60

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """Strip values; an empty one means the default, as if unset (except the raw password)."""
        if not isinstance(data, Mapping):
            return data
        values = {}
        for key, value in data.items():
            if isinstance(value, str) and key not in _RAW_VARIABLES:
                value = value.strip()
            if value != "":
                values[key] = value
        return values

    @field_validator("auth_password")
    @classmethod
    def _check_password(cls, password: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if "auth_password_hash" not in info.data:
            return None  # the hash given is invalid: that is the one problem to report
        if info.data["auth_password_hash"] is not None:
            return None  # the hash wins; a password beside it is not used
        if password is None:
            raise ValueError("required unless DASHBOARD_AUTH_PASSWORD_HASH is set")
        text = password.get_secret_value()
        if len(text) < 8:
            raise ValueError("must be at least 8 characters")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            # Bytes that are not UTF-8 reach os.environ as surrogates; no JSON login could match them.
            raise ValueError("must be UTF-8 text") from None
        if size > 72:
            raise ValueError("must be at most 72 bytes (bcrypt ignores the rest)")
        return password

    @field_validator("proxy_auth_token")
    @classmethod
    def _check_proxy_token(cls, token: str | None, info: ValidationInfo) -> str | None:
        if token is not None and any(not ch.isprintable() or ch.isspace() for ch in token):
            raise ValueError("must not contain spaces or control characters")
        if info.data.get("proxy_auth_enabled"):
            if token is None:
                raise ValueError("required when PROXY_AUTH_ENABLED=true")
            if len(token) < 16:
                raise ValueError("must be at least 16 characters")
        return token

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None and info.data.get("redis_url"):
            raise ValueError("required when REDIS_URL is set: the URL other servers of the fleet reach this "
                             "one at, e.g. http://gpu-box-2:5000")
        return url

    @property
    def session_expiry_s(self) -> float:
        return self.session_expiry_hours * 3600.0


VARIABLES = {field.alias: name for name, field in Config.model_fields.items() if field.alias}


def load_config(environ: Mapping[str, str] | None = None,
                dotenv_path: str | os.PathLike | None = ".env") -> Config:
    """Read the environment over `.env` into a Config, or raise ConfigError listing every problem."""
    problems: list[str] = []
    values = _variables(environ, dotenv_path, problems)
    try:
        config = Config(**{name: value for name, value in values.items() if name in VARIABLES})
    except ValidationError as exc:
        problems.extend(describe_errors(exc))
        config = None
    if problems:
        raise ConfigError(problems)
    return config


def redis_url_given(environ: Mapping[str, str] | None = None, dotenv_path: str | os.PathLike | None = ".env") -> bool:
    """Whether REDIS_URL is set, where load_config() would read it; True too when `.env` cannot be
    read (load_config() then reports it). Checked before the server imports its libraries (app.py)."""
    problems: list[str] = []
    value = _variables(environ, dotenv_path, problems).get("REDIS_URL", "")
    return bool(problems) or bool(value.strip())


def _variables(environ: Mapping[str, str] | None, dotenv_path: str | os.PathLike | None,
               problems: list[str]) -> dict[str, str]:
    """The environment over `.env`, as text; a `.env` that cannot be read is added to `problems`."""
    values: dict[str, str] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        try:
            values.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            problems.append(f"{dotenv_path}: cannot read it: {reason}")
    values.update(os.environ if environ is None else environ)
    return values


def ensure_data_dir(config: Config) -> str | None:
    """Create DASHBOARD_DATA_DIR if missing; return the problem line when that fails."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"DASHBOARD_DATA_DIR: cannot create {str(config.data_dir)!r}: {exc.strerror or exc}"
    return None


def describe_errors(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into one line per variable: "NAME: what is wrong"."""
    aliases = {name: field.alias or name for name, field in Config.model_fields.items()}
    lines: list[str] = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        key = str(error["loc"][0]) if error["loc"] else "configuration"
        variable = aliases.get(key, key)
        if variable in seen:
            continue  # one line per variable: the first problem is the one to fix
        seen.add(variable)
        lines.append(f"{variable}: {_describe(error, Config.model_fields.get(VARIABLES.get(variable, key)))}")
    return lines


def _describe(error: dict, field) -> str:
    kind, ctx, given = error["type"], error.get("ctx", {}), error.get("input")
    shown = repr(given) if isinstance(given, str) else given
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "missing":
        return f"required ({field.description})" if field is not None and field.description else "required"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, not {shown}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, not {shown}"
    if kind == "finite_number":
        return f"must be a finite number, not {shown}"
    bounds = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]:g}, not {given}"
    return error["msg"]
