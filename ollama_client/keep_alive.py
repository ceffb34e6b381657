"""Ollama's keep_alive syntax: seconds as a number, or a Go duration string."""
from __future__ import annotations

import math
import re

# A (possibly negative) number of seconds, or a Go duration such as "5m", "1h30m", "-1s".
# ASCII digits only: \d would pass "٥m" on to Ollama, which cannot parse it.
_GO_DURATION = re.compile(r"^-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_EXPECTED = "must be a duration such as 5m, 1h, or seconds (-1 = forever)"
# Ollama holds keep_alive in a Go time.Duration (int64 nanoseconds): about 292 years either way.
# Beyond that Go overflows (or refuses the JSON), so such a value is refused here, as is a longer text.
MAX_SECONDS = (2**63 - 1) // 10**9
MAX_TEXT_LENGTH = 64
_TOO_LONG = f"must be at most {MAX_SECONDS} seconds (about 292 years; -1 = forever)"


def parse_keep_alive(raw: str | int | float) -> str | int | float:
    """Validate Ollama's keep_alive: seconds as a number, or a Go duration string.

    >>> parse_keep_alive("-1"), parse_keep_alive("5m"), parse_keep_alive(300), parse_keep_alive("1.5")
    (-1, '5m', 300, 1.5)
    >>> parse_keep_alive("forever")
    Traceback (most recent call last):
    ...
    ValueError: must be a duration such as 5m, 1h, or seconds (-1 = forever), not 'forever'
    >>> parse_keep_alive(10**400)
    Traceback (most recent call last):
    ...
    ValueError: must be at most 9223372036 seconds (about 292 years; -1 = forever)
    """
    if isinstance(raw, bool):
        raise ValueError(_EXPECTED)
    if isinstance(raw, int):
        return _bounded(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError("must be a finite number of seconds")
        return _bounded(int(raw) if raw.is_integer() else raw)
    text = raw.strip()
    if len(text) > MAX_TEXT_LENGTH:
        raise ValueError(f"{_EXPECTED}, at most {MAX_TEXT_LENGTH} characters")
    if _NUMBER.match(text):
        # Exact for whole numbers (float("9" * 400) would be inf, int() of it an error).
        number = int(text) if "." not in text else float(text)
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        return _bounded(number)
    if _GO_DURATION.match(text):
        seconds = sum(float(value) * _UNIT_S[unit] for value, unit in _GO_PART.findall(text))
        if seconds > MAX_SECONDS:
            raise ValueError(_TOO_LONG)
        return text
    raise ValueError(f"{_EXPECTED}, not {raw!r}")


def _bounded(seconds: int | float) -> int | float:
    if abs(seconds) > MAX_SECONDS:
        raise ValueError(_TOO_LONG)
    return seconds
