"""A small, bounded reader of a GGUF file's header: only the metadata keys a fit estimate needs.

The header comes from an untrusted source (a registry's blob, read with an HTTP Range), so every
count and length is checked against hard limits and against the bytes actually there before
anything is allocated; arrays of fixed-size values are skipped by arithmetic, not element by
element. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3).

>>> header = build_header({"general.architecture": "llama", "llama.block_count": 32})
>>> read_metadata(header, wanted=lambda key: True).values["llama.block_count"]
32
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable

MAGIC = b"GGUF"
MAX_KV_COUNT = 65_536          # real models carry 20-60 keys
MAX_KEY_BYTES = 65_535         # the format's own limit on a key
MAX_STRING_BYTES = 4 * 1024 * 1024  # a chat template is a few KiB; a tokenizer entry a few bytes
MAX_ARRAY_ITEMS = 16 * 1024 * 1024  # a vocabulary is ~10^5 entries; merges ~3*10^5
MAX_ARRAY_DEPTH = 2
MAX_KEPT_ITEMS = 1 << 20        # a wanted array is built as a list: at most this many items

# type id -> (struct format, size) for the fixed-size value types
_FIXED = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
          6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """The bytes are not a GGUF header this reader accepts (bad magic, version, or a limit broken)."""


class GgufTruncated(GgufError):
    """The header goes on past the bytes given; `needed_bytes` is at least how many are needed."""

    def __init__(self, needed_bytes: int):
        super().__init__(f"GGUF header continues past the bytes read (needs at least {needed_bytes})")
        self.needed_bytes = needed_bytes


@dataclass
class GgufMetadata:
    """The wanted keys' values; arrays that were not wanted appear in `array_lengths` only."""

    version: int
    values: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    complete: bool = False  # every key/value pair was read (not stopped early by `enough`)


class _Cursor:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise GgufTruncated(end)
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise GgufTruncated(self.pos + n)
        self.pos += n

    def string(self, limit: int, what: str) -> bytes:
        length = self.unpack("<Q", 8)
        if length > limit:
            raise GgufError(f"{what} of {length} bytes exceeds the limit of {limit}")
        return bytes(self.take(length))


def read_metadata(data: bytes, *, wanted: Callable[[str], bool],
                  enough: Callable[[GgufMetadata], bool] | None = None) -> GgufMetadata:
    """Parse the key/value section of a GGUF header, keeping the values of `wanted` keys.

    Stops as soon as `enough(metadata)` is true (checked after each key), so a caller needing
    a few architecture keys never reads the tokenizer's megabytes. Raises GgufTruncated when
    `data` ends first (read more and call again) and GgufError on anything malformed.
    """
    cur = _Cursor(data)
    if bytes(cur.take(4)) != MAGIC:
        raise GgufError("not a GGUF file (bad magic)")
    version = cur.unpack("<I", 4)
    if version not in (2, 3):
        raise GgufError(f"unsupported GGUF version {version}")
    cur.unpack("<Q", 8)  # tensor count: not needed, and never used to allocate
    kv_count = cur.unpack("<Q", 8)
    if kv_count > MAX_KV_COUNT:
        raise GgufError(f"{kv_count} metadata keys exceeds the limit of {MAX_KV_COUNT}")
    meta = GgufMetadata(version=version)
    for _ in range(kv_count):
        try:
            key = cur.string(MAX_KEY_BYTES, "a key").decode("utf-8")
        except UnicodeDecodeError:
            raise GgufError("a metadata key is not UTF-8") from None
        type_id = cur.unpack("<I", 4)
        keep = wanted(key)
        if type_id == _ARRAY:
            item_type = cur.unpack("<I", 4)
            count = cur.unpack("<Q", 8)
            if count > MAX_ARRAY_ITEMS:
                raise GgufError(f"array {key!r} of {count} items exceeds the limit of {MAX_ARRAY_ITEMS}")
            meta.array_lengths[key] = count
            if keep and count > MAX_KEPT_ITEMS:
                raise GgufError(f"array {key!r} of {count} items is too long to read (limit {MAX_KEPT_ITEMS})")
            if not keep and enough is not None and enough(meta):
                return meta  # its length was all that was needed: the items are never read
            value = _array(cur, item_type, count, keep, depth=1)
            if keep:
                meta.values[key] = value
        else:
            value = _scalar(cur, type_id)
            if keep:
                meta.values[key] = value
        if enough is not None and enough(meta):
            return meta
    meta.complete = True
    return meta


def _scalar(cur: _Cursor, type_id: int) -> Any:
    if type_id in _FIXED:
        return cur.unpack(*_FIXED[type_id])
    if type_id == _STRING:
        return cur.string(MAX_STRING_BYTES, "a string").decode("utf-8", errors="replace")
    raise GgufError(f"unknown GGUF value type {type_id}")


def _array(cur: _Cursor, item_type: int, count: int, keep: bool, depth: int) -> list[Any] | None:
    if item_type in _FIXED:
        fmt, size = _FIXED[item_type]
        if not keep:
            cur.skip(count * size)
            return None
        raw = cur.take(count * size)  # checked against the data before any list is built
        return list(struct.unpack(f"<{count}{fmt[1]}", raw))
    if item_type == _STRING:
        out: list[Any] | None = [] if keep else None
        for _ in range(count):  # each item takes >= 8 bytes: bounded by the data's length
            text = cur.string(MAX_STRING_BYTES, "a string")
            if out is not None:
                out.append(text.decode("utf-8", errors="replace"))
        return out
    if item_type == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise GgufError("arrays nested too deeply")
        out = [] if keep else None
        for _ in range(count):
            inner_type = cur.unpack("<I", 4)
            inner_count = cur.unpack("<Q", 8)
            if inner_count > MAX_ARRAY_ITEMS:
                raise GgufError(f"nested array of {inner_count} items exceeds the limit")
            item = _array(cur, inner_type, inner_count, keep, depth + 1)
            if out is not None:
                out.append(item)
        return out
    raise GgufError(f"unknown GGUF array item type {item_type}")


def build_header(values: dict[str, Any], *, version: int = 3, tensor_count: int = 0) -> bytes:
    """Encode `values` as a GGUF header (for tests and fakes): int -> uint32 (uint64 if large),
    float -> float32, bool, str, and lists of ints or strings."""
    out = [MAGIC, struct.pack("<IQQ", version, tensor_count, len(values))]
    for key, value in values.items():
        out.append(_encode_string(key))
        out.append(_encode_value(value))
    return b"".join(out)


def _encode_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return struct.pack("<IQ", 10, value) if value > 0xFFFFFFFF or value < 0 else struct.pack("<II", 4, value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, str):
        return struct.pack("<I", _STRING) + _encode_string(value)
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return struct.pack("<IIQ", _ARRAY, _STRING, len(value)) + b"".join(_encode_string(v) for v in value)
        return struct.pack("<IIQ", _ARRAY, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
    raise TypeError(f"cannot encode {type(value).__name__}")
