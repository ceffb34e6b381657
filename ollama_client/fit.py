"""Will it fit? The contract's VRAM formula and the choice of models to unload; pure functions.

kv_cache_bytes = block_count x num_ctx x head_count_kv x (key_length + value_length) x 2 (f16).
overhead_bytes = Ollama's compute-graph estimate + a fixed runtime reserve (see README, "Will
it fit?"). Nothing here does I/O: the caller hands in model_info, free memory and loaded models.

>>> llama = {"general.architecture": "llama", "llama.block_count": 32, "llama.embedding_length": 4096,
...          "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8}
>>> kv_cache_bytes(model_shape(llama), 8192)
1073741824
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from ollama_client.formatting import human_bytes

DEFAULT_NUM_CTX = 4096
MAX_NUM_CTX = 1_048_576
MAX_BATCH = 512                          # Ollama's default num_batch
RUNTIME_RESERVE_BYTES = 457 * 1024 ** 2  # Ollama's per-GPU minimum for CUDA (context, cuBLAS)
DEFAULT_VOCAB = 128_000                  # when neither vocab_size nor the token list is known
MAX_UNLOAD_CANDIDATES = 12               # 4096 subsets at most


class MissingModelInfo(ValueError):
    """model_info lacks a key the formula needs; `keys` names them."""

    def __init__(self, keys: Sequence[str]):
        super().__init__("model_info lacks " + ", ".join(keys))
        self.keys = tuple(keys)


@dataclass(frozen=True)
class ModelShape:
    """The few architecture numbers the estimate uses."""

    architecture: str
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int | tuple[int, ...]   # per-layer in some architectures
    key_length: int
    value_length: int
    vocab_size: int | None = None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _count_or_layers(value: Any) -> int | tuple[int, ...] | None:
    if isinstance(value, list) and value and all(_positive_int(v) is not None or v == 0 for v in value):
        return tuple(int(v) for v in value)
    return _positive_int(value)


def model_shape(model_info: dict[str, Any]) -> ModelShape:
    """Read the shape from /api/show's model_info (or GGUF metadata); raise MissingModelInfo."""
    arch = model_info.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise MissingModelInfo(["general.architecture"])
    p = arch + "."
    block_count = _positive_int(model_info.get(p + "block_count"))
    embedding = _positive_int(model_info.get(p + "embedding_length"))
    heads = _count_or_layers(model_info.get(p + "attention.head_count"))
    missing = [p + k for k, v in (("block_count", block_count), ("embedding_length", embedding),
                                  ("attention.head_count", heads)) if v is None]
    if missing:
        raise MissingModelInfo(missing)
    head_count = max(heads) if isinstance(heads, tuple) else heads
    if head_count <= 0:
        raise MissingModelInfo([p + "attention.head_count"])
    kv_raw = model_info.get(p + "attention.head_count_kv")
    head_count_kv = _count_or_layers(kv_raw) if kv_raw is not None else head_count
    if head_count_kv is None:
        raise MissingModelInfo([p + "attention.head_count_kv"])
    default_len = embedding // head_count
    key_length = _positive_int(model_info.get(p + "attention.key_length")) or default_len
    value_length = _positive_int(model_info.get(p + "attention.value_length")) or default_len
    vocab = _positive_int(model_info.get(p + "vocab_size"))
    if vocab is None:
        tokens = model_info.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, list) and tokens else None
    return ModelShape(arch, block_count, embedding, head_count, head_count_kv, key_length, value_length, vocab)


def kv_cache_bytes(shape: ModelShape, num_ctx: int) -> int:
    """block_count x num_ctx x head_count_kv x (key_length + value_length) x 2 bytes (f16)."""
    per_token_per_head = (shape.key_length + shape.value_length) * 2
    if isinstance(shape.head_count_kv, tuple):  # per layer: sum over the layers there are
        heads_over_layers = sum(shape.head_count_kv[:shape.block_count])
        return num_ctx * heads_over_layers * per_token_per_head
    return shape.block_count * num_ctx * shape.head_count_kv * per_token_per_head


def graph_bytes(shape: ModelShape, num_ctx: int) -> int:
    """Ollama's full-offload compute-graph estimate (llm/memory.go GraphSize, the llama form)."""
    batch = min(num_ctx, MAX_BATCH)
    vocab = shape.vocab_size or DEFAULT_VOCAB
    return max(4 * batch * (1 + 4 * shape.embedding_length + num_ctx * (1 + shape.head_count)),
               4 * batch * (shape.embedding_length + vocab))


def overhead_bytes(shape: ModelShape, num_ctx: int) -> int:
    """The compute graph plus the runtime reserve (CUDA context and libraries)."""
    return graph_bytes(shape, num_ctx) + RUNTIME_RESERVE_BYTES


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory: what unloading it would free, per GPU where the driver measured it."""

    name: str
    size_vram_bytes: int
    expires_at: str | None = None
    gpu_bytes: dict[int, int] = field(default_factory=dict)  # empty: only Ollama's size_vram known


@dataclass(frozen=True)
class FitEstimate:
    """The answer of POST /api/models/ollama/fit."""

    model_name: str
    num_ctx: int
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    gpus: tuple[tuple[int, int], ...]   # (index, free_bytes)
    source: str
    unload_to_fit: tuple[str, ...] = ()

    @property
    def required_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def fits_single(self) -> int | None:
        """The first GPU it fits on alone, or None."""
        return next((i for i, free in self.gpus if self.required_bytes <= free), None)

    @property
    def fits(self) -> bool:
        return fits_in(self.required_bytes, dict(self.gpus))

    @property
    def split(self) -> bool:
        return self.fits and self.fits_single is None

    def message(self) -> str:
        single = self.fits_single
        if single is not None:
            return f"fits on GPU {single}"
        if self.fits:
            return "fits split across GPUs " + ", ".join(str(i) for i, _ in self.gpus)
        total_free = sum(free for _, free in self.gpus)
        short = human_bytes(max(self.required_bytes - total_free, 0))
        if self.unload_to_fit:
            return f"needs {short} more — unload {', '.join(self.unload_to_fit)}?"
        if not self.gpus:
            return "no GPU to load it on"
        return f"needs {short} more; unloading every loaded model would not be enough"

    def to_dict(self) -> dict[str, Any]:
        required = self.required_bytes
        return {"model_name": self.model_name, "fits": self.fits, "split": self.split, "num_ctx": self.num_ctx,
                "required_bytes": required, "weights_bytes": self.weights_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "overhead_bytes": self.overhead_bytes,
                "gpus": [{"index": i, "free_bytes": free, "fits": required <= free} for i, free in self.gpus],
                "unload_to_fit": list(self.unload_to_fit), "source": self.source, "message": self.message()}


def fits_in(required: int, free_by_gpu: dict[int, int], unplaced_bytes: int = 0) -> bool:
    """True when `required` fits on one GPU, or on all of them together (split).

    `unplaced_bytes` is memory known to be free somewhere on these GPUs, but not where.
    """
    return bool(free_by_gpu) and (any(required <= f for f in free_by_gpu.values())
                                  or required <= sum(free_by_gpu.values()) + unplaced_bytes)


def unload_to_fit(required: int, free_by_gpu: dict[int, int], loaded: Iterable[LoadedModel]) -> list[str]:
    """The loaded models whose unloading makes `required` fit: fewest first, soonest expiry first.

    Empty when it fits already or when no set would do. A model the driver measured frees its
    per-GPU bytes; one only Ollama knows frees its size_vram on the single GPU (several GPUs:
    it counts toward the split total only).

    >>> a = LoadedModel("a", 4, "2030-01-01T00:00:00Z", {0: 4}); b = LoadedModel("b", 4, "2029-01-01T00:00:00Z", {0: 4})
    >>> unload_to_fit(10, {0: 3}, [a, b]), unload_to_fit(6, {0: 3}, [a, b]), unload_to_fit(99, {0: 3}, [a, b])
    (['b', 'a'], ['b'], [])
    """
    if not free_by_gpu or fits_in(required, free_by_gpu):
        return []
    # Soonest expiry first, so that among equally small sets the first found is the one to use.
    candidates = sorted(loaded, key=lambda m: (_expiry_key(m.expires_at), m.name))[:MAX_UNLOAD_CANDIDATES]
    for size in range(1, len(candidates) + 1):
        for combo in itertools.combinations(candidates, size):
            if fits_in(required, *_freed(free_by_gpu, combo)):
                return [m.name for m in combo]
    return []


def _freed(free_by_gpu: dict[int, int], models: Iterable[LoadedModel]) -> tuple[dict[int, int], int]:
    free = dict(free_by_gpu)
    unplaced = 0
    for model in models:
        if model.gpu_bytes:
            for index, used in model.gpu_bytes.items():
                if index in free:
                    free[index] += used
        elif len(free) == 1:
            free[next(iter(free))] += model.size_vram_bytes
        else:
            unplaced += model.size_vram_bytes
    return free, unplaced


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _expiry_key(expires_at: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 time (Go's nanoseconds trimmed); unknown sorts last."""
    if not isinstance(expires_at, str):
        return float("inf")
    text = _FRACTION.sub(r"\1", expires_at.strip()).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return float("inf")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_num_ctx(value: Any) -> int:
    """Return num_ctx (default 4096) or raise ValueError saying what is wrong.

    JSON has one number type, and JSON Schema's "integer" (the OpenAPI document's) includes
    4096.0: an integral float is that integer. 4096.5, "4096" and true are not.
    """
    if value is None:
        return DEFAULT_NUM_CTX
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NUM_CTX:
        raise ValueError(f"field num_ctx must be an integer from 1 to {MAX_NUM_CTX:,}")
    return value
