"""Fit estimates from Ollama, the registry and the poller's latest reading; making room by unloading.

The routes call `FitAdvisor.estimate` and `FitAdvisor.make_room`. Every unload made to make room
goes through `unload_for_room`, which calls `on_unload(model_name)` after each one (the audit log's
hook). Loaded models get the driver's per-GPU figures through `driver_vram_by_model`.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable

from errors import ApiError, NotFoundError, NvmlUnavailableError
from ollama_client import fit
from ollama_client.names import ModelName, canonical_or_none

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class ModelInfoError(ApiError):
    """The model's metadata lacks what the estimate needs."""

    status = 422


def driver_vram_by_model(snapshot: Any) -> dict[str, dict[int, int]]:
    """canonical model name -> {gpu_index: used_mb} summed over the processes serving it."""
    out: dict[str, dict[int, int]] = {}
    if snapshot is None or not getattr(snapshot, "available", False):
        return out
    for process in snapshot.processes:
        key = canonical_or_none(process.model) if process.model else None
        if key is None or process.used_mb is None:
            continue
        per_gpu = out.setdefault(key, {})
        per_gpu[process.gpu_index] = per_gpu.get(process.gpu_index, 0) + process.used_mb
    return out


def loaded_vram_fields(model_name: str, measured: dict[str, dict[int, int]]) -> dict[str, Any]:
    """The contract's `gpus` and `vram_source` for one loaded model."""
    per_gpu = measured.get(canonical_or_none(model_name) or "", {})
    return {"gpus": [{"index": i, "used_mb": mb} for i, mb in sorted(per_gpu.items())],
            "vram_source": "driver" if per_gpu else "ollama"}


class FitAdvisor:
    """Answer "will it fit?" and make room; `snapshot()` returns the poller's latest VramSnapshot."""

    def __init__(self, ollama, index, registry, snapshot: Callable[[], Any],
                 on_unload: Callable[[str], None] | None = None):
        self._ollama = ollama
        self._index = index
        self._registry = registry
        self._snapshot = snapshot
        self.on_unload = on_unload

    def estimate(self, name: ModelName, num_ctx: int = fit.DEFAULT_NUM_CTX, *,
                 local_only: bool = False) -> fit.FitEstimate:
        """Estimate what loading `name` with `num_ctx` needs, and what to unload if it does not fit.

        A model not downloaded is looked up in its registry, unless `local_only` (then 404).
        """
        snapshot = self._snapshot()
        if snapshot is None or not snapshot.available:
            raise NvmlUnavailableError(getattr(snapshot, "error", None)
                                       or "no VRAM reading yet: the first NVML poll has not finished")
        # A model that is loaded already would be reloaded in its own place: its memory counts as free.
        own = driver_vram_by_model(snapshot).get(name.canonical, {})
        gpus = tuple((g.index, (g.free_mb + own.get(g.index, 0)) * MIB) for g in snapshot.gpus
                     if g.error is None and g.free_mb is not None)
        tags = self._ollama.list_models()
        self._index.observe_tags(tags)
        local = next((m for m in tags if canonical_or_none(str(m.get("name") or m.get("model") or ""))
                      == name.canonical), None)
        if local is not None:
            weights = local.get("size") if isinstance(local.get("size"), int) else 0
            shown = self._index.show(str(local.get("name") or local.get("model")), str(local.get("digest", "")))
            info, source = shown.model_info, "local"
        elif local_only:
            raise NotFoundError(f"model {name} is not downloaded; download it first")
        else:
            remote = self._registry.model(name)
            weights, info, source = remote.weights_bytes, remote.model_info, "registry"
        try:
            shape = fit.model_shape(info)
        except fit.MissingModelInfo as exc:
            raise ModelInfoError(f"cannot estimate {name}: its model_info lacks {', '.join(exc.keys)}",
                                 extra={"model_name": str(name)}) from None
        estimate = fit.FitEstimate(model_name=str(name), num_ctx=num_ctx, weights_bytes=weights,
                                   kv_cache_bytes=fit.kv_cache_bytes(shape, num_ctx),
                                   overhead_bytes=fit.overhead_bytes(shape, num_ctx), gpus=gpus, source=source)
        if estimate.fits:
            return estimate
        loaded = self._loaded_models(snapshot, exclude=name.canonical)
        unload = fit.unload_to_fit(estimate.required_bytes, dict(gpus), loaded)
        return dataclasses.replace(estimate, unload_to_fit=tuple(unload))

    def _loaded_models(self, snapshot: Any, exclude: str) -> list[fit.LoadedModel]:
        ps = self._ollama.list_loaded()
        self._index.observe_loaded(ps)
        measured = driver_vram_by_model(snapshot)
        out = []
        for model in ps:
            model_name = str(model.get("name") or model.get("model") or "")
            key = canonical_or_none(model_name)
            if not key or key == exclude:
                continue
            size_vram = model.get("size_vram") if isinstance(model.get("size_vram"), int) else 0
            gpu_bytes = {i: mb * MIB for i, mb in measured.get(key, {}).items()}
            out.append(fit.LoadedModel(model_name, size_vram, model.get("expires_at"), gpu_bytes))
        return out

    def unload_for_room(self, names: Iterable[str]) -> list[str]:
        """Unload each model (through this one function), telling on_unload after each; return them."""
        done = []
        for model_name in names:
            self._ollama.unload(model_name)
            done.append(model_name)
            log.info("unloaded %s to make room", model_name)
            if self.on_unload is not None:
                self.on_unload(model_name)
        return done
