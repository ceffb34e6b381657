"""bcrypt: hash the administrator's password once, check login attempts against it."""
from __future__ import annotations

import os

import bcrypt

import concurrency
from config import Config
from errors import ServiceUnavailableError

# bcrypt's cost: 2**12 rounds take ~250 ms, which is what makes guessing slow. Tests pass rounds=4.
BCRYPT_ROUNDS = 12
# Password checks run in threads of their own, never in run_in_thread's pool (eventlet's tpool),
# where the poller's NVML reads would queue behind a flood of logins. One thread per core but one
# (1 to 4), so that the hub and NVML keep a core; 8 more wait (~1-2 s at cost 12); beyond that,
# or after waiting PASSWORD_CHECK_TIMEOUT_S, 503 with Retry-After.
PASSWORD_CHECK_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
PASSWORD_CHECK_QUEUE = 8
PASSWORD_CHECK_TIMEOUT_S = 10.0
BUSY = "too many logins at once; retry in a moment"
_POOL = concurrency.BoundedThreadPool(PASSWORD_CHECK_WORKERS, PASSWORD_CHECK_QUEUE, name="bcrypt")


def hash_password(password: str, rounds: int | None = None) -> bytes:
    """Hash a password with bcrypt at the given cost (BCRYPT_ROUNDS by default)."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=BCRYPT_ROUNDS if rounds is None else rounds))


def check_password(password: str, hashed: bytes) -> bool:
    """Return whether password matches the bcrypt hash (False for one bcrypt cannot take)."""
    try:
        # surrogatepass: a JSON body may carry lone surrogates; they simply do not match.
        return bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), hashed)
    except ValueError:
        # bcrypt 5 raises on passwords over 72 bytes; they can never match a valid password.
        return False


def check_password_async(password: str, hashed: bytes) -> bool:
    """check_password in the password-check threads, waiting greenly; 503 (Retry-After) when they are full."""
    try:
        return _POOL.submit_and_wait(check_password, password, hashed, timeout_s=PASSWORD_CHECK_TIMEOUT_S)
    except (concurrency.PoolBusyError, concurrency.PoolTimeoutError):
        raise ServiceUnavailableError(BUSY, headers={"Retry-After": "1"}) from None


def admin_password_hash(config: Config, rounds: int | None = None) -> bytes:
    """Return the administrator's bcrypt hash: the one configured, or one made from the password."""
    if config.auth_password_hash is not None:
        return config.auth_password_hash
    if config.auth_password is None:
        raise ValueError("the configuration has neither a password nor a password hash")
    return hash_password(config.auth_password.get_secret_value(), BCRYPT_ROUNDS if rounds is None else rounds)


def validate_password(password: str, field: str) -> None:
    """Raise a 400 naming `field` unless the password is 8-72 bytes of UTF-8 (bcrypt's limit)."""
    from errors import BadRequestError

    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequestError(f"field {field} must be valid UTF-8 text") from None
    if len(password) < 8:
        raise BadRequestError(f"field {field} must be at least 8 characters")
    if size > 72:
        raise BadRequestError(f"field {field} must be at most 72 bytes (bcrypt ignores the rest)")


def hash_password_like(user) -> bytes:
    """A hash at the cost of `user`'s own (or the default): checked when a login names nobody."""
    rounds = BCRYPT_ROUNDS
    if user is not None:
        try:
            rounds = int(user.password_hash.decode("ascii").split("$")[2])
        except (IndexError, ValueError):
            pass
    return hash_password("not a password of anyone", rounds)
