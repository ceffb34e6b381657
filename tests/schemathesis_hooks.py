"""Schemathesis hooks for tests/test_openapi_live.py: fresh session tokens from a pool; bodies the schema cannot judge.

The fuzzer calls POST /api/auth/logout too, which ends the session it was sent with, so one token
would leave every later operation at 401. The test logs in up front (before the fuzzer's failed
logins can trip the login throttle) and hands the tokens over in SCHEMATHESIS_TOKENS; on a 401
the provider takes the next one.
"""
from __future__ import annotations

import os

import schemathesis

_POOL = [token for token in os.environ.get("SCHEMATHESIS_TOKENS", "").split(",") if token]


@schemathesis.auth(retry_on=[401])
class SessionTokenPool:
    """Hand out the next unused session token (each time the last one came back 401)."""

    def get(self, case, ctx):
        if not _POOL:
            raise RuntimeError("the session token pool is used up; raise TOKEN_POOL in tests/test_openapi_live.py")
        return _POOL.pop(0)

    def set(self, case, data, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# Fields whose rule JSON Schema cannot state exactly: a password is 8+ characters but at most 72
# *bytes* of UTF-8 (bcrypt), a key name 1-100 *printable* characters (str.isprintable). The
# document says so in their descriptions and bounds them by characters; a generated value that
# fits those bounds yet breaks the byte or printable rule is neither clearly valid nor invalid,
# so it is not sent (values outside the character bounds still are).
_PASSWORD_FIELDS = ("password", "current_password", "new_password")


@schemathesis.hook
def filter_body(context, body):
    if not isinstance(body, dict):
        return True
    for field in _PASSWORD_FIELDS:
        value = body.get(field)
        if isinstance(value, str) and 8 <= len(value) <= 72 and len(value.encode("utf-8", "surrogatepass")) > 72:
            return False
    name = body.get("name")
    operation = getattr(context, "operation", None)
    if operation is not None and operation.path == "/api/keys" and isinstance(name, str) \
            and 1 <= len(name) <= 100 and not name.isprintable():
        return False
    return True
