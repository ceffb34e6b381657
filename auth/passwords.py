"""bcrypt: hash the administrator's password once, check login attempts against it."""
from __future__ import annotations

import bcrypt

from config import Config

# bcrypt's cost: 2**12 rounds take ~250 ms, which is what makes guessing slow. Tests pass rounds=4.
BCRYPT_ROUNDS = 12


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> bytes:
    """Hash a password with bcrypt at the given cost."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds))


def check_password(password: str, hashed: bytes) -> bool:
    """Return whether password matches the bcrypt hash (False for one bcrypt cannot take)."""
    try:
        # surrogatepass: a JSON body may carry lone surrogates; they simply do not match.
        return bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), hashed)
    except ValueError:
        # bcrypt 5 raises on passwords over 72 bytes; they can never match a valid password.
        return False


def admin_password_hash(config: Config, rounds: int | None = None) -> bytes:
    """Return the administrator's bcrypt hash: the one configured, or one made from the password."""
    if config.auth_password_hash is not None:
        return config.auth_password_hash
    if config.auth_password is None:
        raise ValueError("the configuration has neither a password nor a password hash")
    return hash_password(config.auth_password.get_secret_value(), BCRYPT_ROUNDS if rounds is None else rounds)
