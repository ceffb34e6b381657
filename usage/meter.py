"""Tokens read from Ollama's answer as its bytes pass through the proxy, never buffering it.

Ollama puts `model` first and `prompt_eval_count` / `eval_count` in its last NDJSON line (or at the
end of its JSON body); the OpenAI-compatible endpoints put `usage` last. So the meter keeps the
first and the last few KiB only, and reads them once the answer has ended.
"""
from __future__ import annotations

import json
import re
import time
from typing import Callable, Iterable, Iterator

from usage.log import Usage

HEAD_BYTES = 2048
TAIL_BYTES = 8192
_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,300})"')
_COUNTS = {
    "prompt": re.compile(rb'"(?:prompt_eval_count|prompt_tokens)"\s*:\s*(\d{1,12})'),
    "completion": re.compile(rb'"(?:eval_count|completion_tokens)"\s*:\s*(\d{1,12})'),
}

# The answers about one model's work, where Ollama names the model and counts tokens. A listing
# (/api/tags, /api/ps, /v1/models) names every model and counts nothing: it is counted as a
# request, with no model and no tokens, and its bytes are not looked at.
INFERENCE_ENDPOINTS = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
                                 "/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


class UsageMeter:
    """Watch one proxied answer go by; `finish()` hands the Usage to `record`."""

    def __init__(self, username: str, key_id: str | None, endpoint: str, status: int,
                 record: Callable[[Usage], None], *, clock: Callable[[], float] = time.monotonic):
        self.username, self.key_id, self.endpoint, self.status = username, key_id, endpoint, status
        self._record = record
        self._clock = clock
        self._started = clock()
        self._head = b""
        self._tail = b""
        self._done = False
        self._reads = endpoint in INFERENCE_ENDPOINTS

    def feed(self, chunk: bytes) -> None:
        if not self._reads:
            return
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[:HEAD_BYTES - len(self._head)]
        tail = self._tail + chunk if len(chunk) < TAIL_BYTES else chunk[-TAIL_BYTES:]
        self._tail = tail[-TAIL_BYTES:]

    def wrap(self, body: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the body unchanged, feeding the meter; finish when it ends (or the client leaves)."""
        try:
            for chunk in body:
                self.feed(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
            self.finish()

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        prompt = completion = model = None
        if self._reads:
            prompt = _last_int(_COUNTS["prompt"], self._tail)
            completion = _last_int(_COUNTS["completion"], self._tail)
            model = _model(self._head) or _model(self._tail)
        self._record(Usage(self.username, self.key_id, self.endpoint, model, self.status,
                           round(self._clock() - self._started, 6), prompt, completion))


def _last_int(pattern: re.Pattern, data: bytes) -> int | None:
    found = pattern.findall(data)
    return int(found[-1]) if found else None


def _model(data: bytes) -> str | None:
    match = _MODEL.search(data)
    if match is None:
        return None
    try:
        return json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return None
