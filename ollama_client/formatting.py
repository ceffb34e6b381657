"""Pure helpers that turn Ollama's numbers into what `ollama list` / `ollama ps` print."""
from __future__ import annotations

import math
from datetime import datetime, timezone

KILOBYTE = 1000
MEGABYTE = KILOBYTE * 1000
GIGABYTE = MEGABYTE * 1000
TERABYTE = GIGABYTE * 1000


def human_bytes(size: int) -> str:
    """Format a byte count as Ollama's CLI does (format.HumanBytes: decimal units).

    >>> [human_bytes(n) for n in (4661224676, 274302450, 2019393189, 1_000_000_000, 45960996)]
    ['4.7 GB', '274 MB', '2.0 GB', '1 GB', '45 MB']
    >>> [human_bytes(n) for n in (0, 999, 1000, 1500, 12_500_000_000_000)]
    ['0 B', '999 B', '1 KB', '1.5 KB', '12 TB']
    """
    if size >= TERABYTE:
        value, unit = size / TERABYTE, "TB"
    elif size >= GIGABYTE:
        value, unit = size / GIGABYTE, "GB"
    elif size >= MEGABYTE:
        value, unit = size / MEGABYTE, "MB"
    elif size >= KILOBYTE:
        value, unit = size / KILOBYTE, "KB"
    else:
        return f"{size} B"
    if value >= 10 or value == math.trunc(value):
        return f"{int(value)} {unit}"
    # Go's %.1f and Python's .1f both round the exact binary value half to even.
    return f"{value:.1f} {unit}"


def processor(size: int, size_vram: int) -> str:
    """Say where a loaded model lives, as `ollama ps` prints it.

    >>> processor(5_000, 0), processor(5_000, 5_000), processor(5_000, 2_600), processor(0, 10)
    ('100% CPU', '100% GPU', '48%/52% CPU/GPU', 'Unknown')
    """
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu_percent = _go_round((size - size_vram) / size * 100)
    return f"{cpu_percent}%/{100 - cpu_percent}% CPU/GPU"


def _go_round(value: float) -> int:
    """Round half away from zero, as Go's math.Round (Python's round() is half-to-even).

    >>> _go_round(2.5), _go_round(3.5), _go_round(49.4)
    (3, 4, 49)
    """
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def short_id(digest: str) -> str:
    """Return the first 12 hex digits of a digest, with or without its `sha256:` prefix.

    >>> short_id("sha256:a80c4f17acd55265feec403c7aef86be"), short_id("a80c4f17acd55265")
    ('a80c4f17acd5', 'a80c4f17acd5')
    """
    _, _, hex_digits = digest.rpartition(":")
    return hex_digits[:12]


def percent_text(percent: float) -> str:
    """Format a percentage as the progress events carry it.

    >>> percent_text(42), percent_text(99.95)
    ('42.0%', '100.0%')
    """
    return f"{percent:.1f}%"


def iso_time(timestamp: float | None) -> str | None:
    """Return a Unix time as ISO 8601 with its zone (UTC), or None.

    >>> iso_time(0)
    '1970-01-01T00:00:00+00:00'
    """
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds" if timestamp % 1 else "seconds")
