"""The only code that speaks HTTP to a model registry: a manifest, and a ranged read of a GGUF header.

A registry is reached as Ollama reaches it: `https://<registry>/v2/<namespace>/<model>/manifests/<tag>`
and `.../blobs/<digest>` (a host:port keeps its port). Only registries in OLLAMA_ALLOWED_REGISTRIES,
only over HTTPS with the system's CA store (OpenSSL's default paths, so `SSL_CERT_FILE` is
honoured) or an injected `ca_bundle`; no credentials are ever sent (urllib3 reads no .netrc and
no proxy settings), and a redirect is followed only to the same host and port (at most 3 hops).
Every read is bounded in bytes and time.
"""
from __future__ import annotations

import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urljoin, urlsplit

import urllib3

from errors import ApiError, BadRequestError, NotFoundError
from ollama_client import gguf
from ollama_client.names import DEFAULT_NAMESPACE, DEFAULT_REGISTRY, DEFAULT_TAG, ModelName

log = logging.getLogger(__name__)

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
MAX_MANIFEST_BYTES = 1024 * 1024
FIRST_READ_BYTES = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_REDIRECTS = 3
TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)
DEADLINE_S = 30.0
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The keys (after "<architecture>.") the estimate reads; tokenizer.ggml.tokens only for its length.
SHAPE_KEYS = ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
              "attention.key_length", "attention.value_length", "context_length", "vocab_size")
_REQUIRED = ("block_count", "embedding_length", "attention.head_count")


class RegistryError(ApiError):
    """The registry answered something we cannot use (an error status, garbage, a bad header)."""

    status = 502


class RegistryUnavailableError(ApiError):
    """The registry could not be reached (refused, unknown host, TLS failure, timeout)."""

    status = 503


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class RegistryModel:
    """What the registry says about a model not downloaded: its layers and its GGUF metadata."""

    registry: str
    layers: tuple[Layer, ...]
    model_info: dict[str, Any]

    @property
    def weights_bytes(self) -> int:
        return sum(layer.size for layer in self.layers)


class RegistryClient:
    """Read manifests and GGUF headers from the allowed registries through one connection pool."""

    def __init__(self, allowed_registries: Iterable[str], *, ca_bundle: str | None = None,
                 timeout: urllib3.Timeout = TIMEOUT, deadline_s: float = DEADLINE_S,
                 max_header_bytes: int = MAX_HEADER_BYTES, first_read_bytes: int = FIRST_READ_BYTES):
        self.allowed = tuple(r.lower() for r in allowed_registries)
        self.timeout = timeout
        self.deadline_s = deadline_s
        self.max_header_bytes = max_header_bytes
        self.first_read_bytes = first_read_bytes
        self.ca_bundle = ca_bundle
        self._pool: urllib3.PoolManager | None = None

    def _pool_manager(self) -> urllib3.PoolManager:
        """Build the pool on first use, with a context from `ssl` itself (see below)."""
        if self._pool is None:
            # ssl.create_default_context: CERT_REQUIRED, host names checked, and OpenSSL's default
            # paths (which read SSL_CERT_FILE / SSL_CERT_DIR) unless a bundle is given. Made by the
            # ssl module, not by urllib3, so it is eventlet's green context even where urllib3 was
            # imported before monkey_patch (urllib3 would build the original class, whose setters
            # then recurse into the patched one).
            context = ssl.create_default_context(cafile=self.ca_bundle)
            self._pool = urllib3.PoolManager(ssl_context=context, retries=False, num_pools=8, maxsize=2,
                                             block=False)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()

    # -- the model -----------------------------------------------------------------------------

    def model(self, name: ModelName) -> RegistryModel:
        """Return the manifest's layers and the model blob's GGUF metadata (404 when unknown)."""
        registry = (name.registry or DEFAULT_REGISTRY).lower()
        if registry not in self.allowed:
            raise BadRequestError(f"invalid model_name: registry {registry!r} is not allowed "
                                  f"(OLLAMA_ALLOWED_REGISTRIES: {', '.join(self.allowed) or 'none'})")
        deadline = time.monotonic() + self.deadline_s
        base = f"https://{registry}/v2/{name.namespace or DEFAULT_NAMESPACE}/{name.model}"
        layers = self._manifest(name, registry, f"{base}/manifests/{name.tag or DEFAULT_TAG}", deadline)
        model_layer = next((layer for layer in layers if layer.media_type == MODEL_MEDIA_TYPE), None)
        if model_layer is None:
            raise RegistryError(f"the manifest of {name} at {registry} has no model layer ({MODEL_MEDIA_TYPE})")
        info = self._gguf_metadata(name, registry, f"{base}/blobs/{model_layer.digest}", model_layer.size, deadline)
        return RegistryModel(registry, layers, info)

    def _manifest(self, name: ModelName, registry: str, url: str, deadline: float) -> tuple[Layer, ...]:
        status, body = self._get(registry, url, {"Accept": MANIFEST_ACCEPT}, MAX_MANIFEST_BYTES, deadline)
        if status == 404:
            raise NotFoundError(f"model {name} not found at registry {registry}")
        if status != 200:
            raise RegistryError(f"registry {registry} answered HTTP {status} for the manifest of {name}")
        try:
            manifest = json.loads(body)
        except ValueError:
            raise RegistryError(f"registry {registry} sent a manifest for {name} that is not JSON") from None
        raw_layers = manifest.get("layers") if isinstance(manifest, dict) else None
        if not isinstance(raw_layers, list) or not raw_layers or len(raw_layers) > 1000:
            raise RegistryError(f"registry {registry} sent a manifest for {name} without layers")
        layers = []
        for raw in raw_layers:
            if not (isinstance(raw, dict) and isinstance(raw.get("mediaType"), str)
                    and isinstance(raw.get("digest"), str) and _DIGEST.fullmatch(raw["digest"])
                    and isinstance(raw.get("size"), int) and not isinstance(raw["size"], bool)
                    and 0 <= raw["size"] < 1 << 50):
                raise RegistryError(f"registry {registry} sent a manifest for {name} with a malformed layer")
            layers.append(Layer(raw["mediaType"], raw["digest"], raw["size"]))
        return tuple(layers)

    def _gguf_metadata(self, name: ModelName, registry: str, url: str, blob_size: int,
                       deadline: float) -> dict[str, Any]:
        data = b""
        want = min(self.first_read_bytes, blob_size) if blob_size else self.first_read_bytes
        state: dict[str, Any] = {}

        def wanted(key: str) -> bool:
            if key == "general.architecture":
                return True
            arch = state.get("arch")
            return arch is not None and key.startswith(arch + ".") and key[len(arch) + 1:] in SHAPE_KEYS

        def enough(meta: gguf.GgufMetadata) -> bool:
            arch = meta.values.get("general.architecture")
            state["arch"] = arch if isinstance(arch, str) else None
            if state["arch"] is None:
                return False
            have = all(f"{arch}.{k}" in meta.values for k in _REQUIRED)
            return have and "tokenizer.ggml.tokens" in meta.array_lengths

        while True:
            if len(data) < want:
                data += self._read_range(name, registry, url, len(data), want - len(data), deadline)
            state.clear()
            try:
                meta = gguf.read_metadata(data, wanted=wanted, enough=enough)
                break
            except gguf.GgufTruncated as exc:
                if len(data) < want or want >= self.max_header_bytes or (blob_size and want >= blob_size):
                    raise RegistryError(f"the GGUF header of {name} at {registry} is truncated or longer "
                                        f"than {self.max_header_bytes} bytes") from None
                want = min(max(exc.needed_bytes, 2 * want), self.max_header_bytes)
            except gguf.GgufError as exc:
                raise RegistryError(f"the model blob of {name} at {registry} has no usable GGUF header: {exc}") from None
        info = dict(meta.values)
        arch = info.get("general.architecture")
        vocab = meta.array_lengths.get("tokenizer.ggml.tokens")
        if isinstance(arch, str) and vocab and f"{arch}.vocab_size" not in info:
            info[f"{arch}.vocab_size"] = vocab
        return info

    def _read_range(self, name: ModelName, registry: str, url: str, start: int, length: int,
                    deadline: float) -> bytes:
        status, body = self._get(registry, url, {"Range": f"bytes={start}-{start + length - 1}"}, length,
                                 deadline, skip=start)
        if status == 404:
            raise RegistryError(f"registry {registry} lists the model blob of {name} but does not serve it")
        if status not in (200, 206):
            raise RegistryError(f"registry {registry} answered HTTP {status} for the model blob of {name}")
        return body

    # -- the one HTTP funnel -------------------------------------------------------------------

    def _get(self, registry: str, url: str, headers: dict[str, str], max_bytes: int, deadline: float,
             *, skip: int = 0) -> tuple[int, bytes]:
        """GET url (same-host redirects only); return (status, at most max_bytes of the body).

        A server that ignores Range (200 instead of 206) has the first `skip` bytes dropped.
        """
        sent = {"User-Agent": "vram-dashboard", **headers}
        for _ in range(MAX_REDIRECTS + 1):
            if time.monotonic() > deadline:
                raise RegistryUnavailableError(f"registry {registry} did not answer within {self.deadline_s:g} s")
            try:
                response = self._pool_manager().request("GET", url, headers=sent, redirect=False, retries=False,
                                                         timeout=self.timeout, preload_content=False)
            except urllib3.exceptions.SSLError as exc:
                raise RegistryUnavailableError(f"registry {registry}: TLS failed ({_reason(exc)}); "
                                               "is its certificate trusted (SSL_CERT_FILE)?") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise RegistryUnavailableError(f"registry {registry} is not reachable: {_reason(exc)}") from None
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location", "")
                    target = urljoin(url, location)
                    if urlsplit(target).scheme != "https" or urlsplit(target).netloc.lower() != urlsplit(url).netloc.lower():
                        raise RegistryError(f"registry {registry} redirected to another host or scheme "
                                            f"({urlsplit(target).netloc or location[:100]!r}); not followed")
                    url = target
                    continue
                body = self._read_body(registry, response, skip if response.status == 200 else 0, max_bytes)
                return response.status, body
            finally:
                response.release_conn()
                response.close()
        raise RegistryError(f"registry {registry} redirected more than {MAX_REDIRECTS} times")

    def _read_body(self, registry: str, response: Any, skip: int, max_bytes: int) -> bytes:
        try:
            while skip > 0:
                chunk = response.read(min(skip, 1024 * 1024))
                if not chunk:
                    return b""
                skip -= len(chunk)
            # read(n) returns up to n bytes: a server sending more than asked is cut, not buffered.
            return response.read(max_bytes) or b""
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RegistryUnavailableError(f"registry {registry}: the connection broke ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    return text[:200] or type(exc).__name__
