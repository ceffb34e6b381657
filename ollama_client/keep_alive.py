"""Ollama's keep_alive syntax: seconds as a number, or a Go duration string."""
from __future__ import annotations

import math
import re

# A (possibly negative) number of seconds, or a Go duration such as "5m", "1h30m", "-1s".
# ASCII digits only: \d would pass "٥m" on to Ollama, which cannot parse it.
_GO_DURATION = re.compile(r"^-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_EXPECTED = "must be a duration such as 5m, 1h, or seconds (-1 = forever)"


def parse_keep_alive(raw: str | int | float) -> str | int | float:
    """Validate Ollama's keep_alive: seconds as a number, or a Go duration string.

    >>> parse_keep_alive("-1"), parse_keep_alive("5m"), parse_keep_alive(300), parse_keep_alive("1.5")
    (-1, '5m', 300, 1.5)
    >>> parse_keep_alive("forever")
    Traceback (most recent call last):
    ...
    ValueError: must be a duration such as 5m, 1h, or seconds (-1 = forever), not 'forever'
    """
    if isinstance(raw, bool):
        raise ValueError(_EXPECTED)
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
    raise ValueError(f"{_EXPECTED}, not {raw!r}")
