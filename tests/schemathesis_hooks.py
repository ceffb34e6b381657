"""Schemathesis hooks for tests/test_openapi_live.py: fresh session tokens from a pool.

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
