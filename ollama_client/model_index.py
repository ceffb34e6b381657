"""Blob digest -> model name, from Ollama's own model list; read by the poller, never per poll.

Each downloaded model's `/api/show` is asked once per model digest (its `modelfile`'s FROM line
names the blob; its `model_info` feeds the fit estimate) and cached by that digest. The index is
refreshed in the background — when `/api/tags` is seen to change (the routes hand over what they
read anyway) or when the poller meets a runner whose blob it does not know — at most once per
`min_refresh_interval_s`. Tags sharing one blob are narrowed by the models `/api/ps` last listed.

>>> blob_of_modelfile('# FROM llama3.2:latest\\nFROM /m/blobs/sha256-' + 'ab' * 32 + '\\nTEMPLATE x')
'sha256:abababababababababababababababababababababababababababababababab'
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import concurrency
from errors import ApiError
from ollama_client.names import canonical_or_none

log = logging.getLogger(__name__)
_FROM_BLOB = re.compile(r"^\s*FROM\s+(?:\S*[/\\])?sha256[-:]([0-9a-f]{64})\s*$", re.IGNORECASE | re.MULTILINE)


def blob_of_modelfile(modelfile: Any) -> str | None:
    """Return the blob digest ("sha256:<hex>") a modelfile's FROM line names, or None."""
    if not isinstance(modelfile, str):
        return None
    match = _FROM_BLOB.search(modelfile)
    return "sha256:" + match.group(1).lower() if match else None


@dataclass(frozen=True)
class ShownModel:
    """What /api/show said about one model digest."""

    blob: str | None
    model_info: dict[str, Any]


def _name(model: dict[str, Any]) -> str:
    return str(model.get("name") or model.get("model") or "")


class ModelIndex:
    """The blob -> names map and the /api/show cache; thread-safe, refreshed in the background."""

    def __init__(self, client, *, spawn: Callable[..., Any] = concurrency.spawn,
                 clock: Callable[[], float] = concurrency.monotonic, min_refresh_interval_s: float = 10.0):
        self._client = client
        self._spawn = spawn
        self._clock = clock
        self.min_refresh_interval_s = min_refresh_interval_s
        self._lock = threading.Lock()
        self._shown: dict[str, ShownModel] = {}           # model digest -> /api/show facts
        self._tags: tuple[tuple[str, str], ...] = ()      # (name, digest) as /api/tags last listed
        self._blob_names: dict[str, tuple[str, ...]] = {}
        self._loaded: frozenset[str] = frozenset()        # canonical names /api/ps last listed
        self._refreshing = False
        self._last_refresh: float | None = None
        self._asked: set[str] = set()                     # unknown blobs asked about since the last change

    # -- reading (the poller, the routes) ---------------------------------------------------------

    def names_for_blob(self, blob: str) -> tuple[str, ...]:
        with self._lock:
            return self._blob_names.get(blob, ())

    def name_for_blob(self, blob: str) -> str | None:
        """The one model serving `blob`: the only tag with it, or the only such tag loaded; else None."""
        with self._lock:
            names = self._blob_names.get(blob, ())
            loaded = self._loaded
        if len(names) == 1:
            return names[0]
        narrowed = [n for n in names if canonical_or_none(n) in loaded]
        return narrowed[0] if len(narrowed) == 1 else None

    def show(self, name: str, digest: str) -> ShownModel:
        """Return /api/show's facts for a downloaded model, asking Ollama only for a new digest."""
        with self._lock:
            cached = self._shown.get(digest)
        if cached is not None:
            return cached
        shown = self._show(name)
        with self._lock:
            self._shown[digest] = shown
        return shown

    def _show(self, name: str) -> ShownModel:
        body = self._client.show(name)
        info = body.get("model_info") if isinstance(body, dict) else None
        return ShownModel(blob_of_modelfile(body.get("modelfile") if isinstance(body, dict) else None),
                          info if isinstance(info, dict) else {})

    # -- what others read anyway -------------------------------------------------------------

    def observe_tags(self, models: Iterable[dict[str, Any]]) -> None:
        """Take /api/tags's answer; refresh in the background if it differs from the last one."""
        tags = tuple(sorted((_name(m), str(m.get("digest", ""))) for m in models))
        with self._lock:
            changed = tags != self._tags
        if changed:
            self._start_refresh(tags=tags, force=True)

    def observe_loaded(self, models: Iterable[dict[str, Any]]) -> None:
        """Take /api/ps's answer (narrows tags that share a blob)."""
        loaded = frozenset(c for c in (canonical_or_none(_name(m)) for m in models) if c)
        with self._lock:
            self._loaded = loaded

    def request_refresh(self, blob: str | None = None) -> None:
        """Ask for a background refresh (a runner's blob is unknown); at most one per interval.

        Each unknown blob asks once until the model list changes: a runner that is not one of
        Ollama's models (a user's own llama-server) does not make us poll Ollama forever.
        """
        with self._lock:
            if blob is not None and blob in self._asked:
                return
        if self._start_refresh(tags=None, force=False) and blob is not None:
            with self._lock:
                self._asked.add(blob)

    # -- refreshing ------------------------------------------------------------------------------

    def _start_refresh(self, *, tags: tuple[tuple[str, str], ...] | None, force: bool) -> bool:
        now = self._clock()
        with self._lock:
            if self._refreshing:
                return False
            if not force and self._last_refresh is not None and now - self._last_refresh < self.min_refresh_interval_s:
                return False
            self._refreshing = True
            self._last_refresh = now
        self._spawn(self._refresh_guarded, tags)
        return True

    def _refresh_guarded(self, tags: tuple[tuple[str, str], ...] | None) -> None:
        try:
            self.refresh(tags)
        except ApiError as exc:  # Ollama down or answering errors: keep the old index
            log.debug("model index refresh failed: %s", exc.message)
        finally:
            with self._lock:
                self._refreshing = False

    def refresh(self, tags: tuple[tuple[str, str], ...] | None = None) -> None:
        """Rebuild the index now: /api/tags (unless given), /api/show per new digest, /api/ps."""
        if tags is None:
            tags = tuple(sorted((_name(m), str(m.get("digest", ""))) for m in self._client.list_models()))
        blob_names: dict[str, list[str]] = {}
        for name, digest in tags:
            try:
                shown = self.show(name, digest)
            except ApiError as exc:  # one model Ollama cannot show is one unknown entry
                log.debug("cannot show %s: %s", name, exc.message)
                continue
            if shown.blob:
                blob_names.setdefault(shown.blob, []).append(name)
        loaded = self._client.list_loaded()
        digests = {d for _, d in tags}
        with self._lock:
            if tags != self._tags:
                self._asked.clear()
            self._tags = tags
            self._blob_names = {blob: tuple(names) for blob, names in blob_names.items()}
            for digest in [d for d in self._shown if d not in digests]:
                del self._shown[digest]  # deleted models
        self.observe_loaded(loaded)
