"""The dashboard's own Ollama model routes, under /api/models/ollama (auth is enforced app-wide)."""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable, Iterator, TypeVar

from flask import Blueprint, request

import concurrency
from errors import ApiError, BadRequestError, ConflictError, NotFoundError, OllamaError
from jsonbody import parsed_json_or_none, read_json_object, require_string
from ollama_client.fit import parse_num_ctx
from ollama_client.fit_service import driver_vram_by_model, loaded_vram_fields
from ollama_client.formatting import human_bytes, processor, short_id
from ollama_client.keep_alive import parse_keep_alive
from ollama_client.names import MAX_NAME, ModelName, canonical_or_none, parse_model_name
import audit
import services as services_module
from auth.permissions import MODELS, READ, require

log = logging.getLogger(__name__)
bp = Blueprint("ollama_models", __name__, url_prefix="/api/models/ollama")
T = TypeVar("T")
DISCONNECT_POLL_S = 0.2


class ClientGoneError(ApiError):
    """The client hung up while we waited on Ollama (nobody reads this answer)."""

    status = 499


def _services():
    return services_module.current()


# -- helpers ---------------------------------------------------------------------------------

def model_operation(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A model operation: it needs the `models` permission, every error of it has the contract's
    shape {success, message, model_name, error}, and each attempt is audited as `action`."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any):
            try:
                answer = view(*args, **kwargs)
            except ApiError as exc:
                body = parsed_json_or_none()
                raw_name = body.get("model_name") if isinstance(body, dict) else None
                name = raw_name if isinstance(raw_name, str) else ""
                exc.extra = {"success": False, "message": exc.message, "model_name": name, **exc.extra}
                if exc.status not in (400, 401, 403, 413):  # refused before it was an attempt
                    audit.record(action, target=name[:300] or None, success=False, detail=exc.message[:500])
                raise
            audit.record(action, target=answer[0]["model_name"])
            return answer

        return require(MODELS)(wrapper)

    return decorate


def _ok(message: str, name: ModelName | str, status: int = 200):
    return {"success": True, "message": message, "model_name": str(name)}, status


def _read_model_name() -> tuple[dict[str, Any], ModelName]:
    """Read the JSON body and validate its model_name with the one validator."""
    body = read_json_object()
    raw = require_string(body, "model_name", max_length=MAX_NAME)
    return body, parse_model_name(raw, _services().config.ollama_allowed_registries)


@contextlib.contextmanager
def _ollama_404_means(message: str) -> Iterator[None]:
    """Turn Ollama's 404 into our 404 (with Ollama's text); other Ollama errors stay 502."""
    try:
        yield
    except OllamaError as exc:
        if exc.upstream_status == 404:
            raise NotFoundError(f"{message} ({exc.message})") from None
        raise


def _call_while_client_waits(fn: Callable[[], T]) -> T:
    """Run a long upstream call; if the client hangs up meanwhile, abort it (closing Ollama's request)."""
    client_gone = concurrency.client_gone_probe(request.environ)
    if client_gone is None:  # not behind the dashboard's HTTP server (Flask's test client)
        return fn()
    done = concurrency.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except Exception as exc:  # handed to the waiting request, which raises it  # noqa: BLE001
            outcome["error"] = exc
        finally:
            done.set()

    worker = concurrency.spawn(work)
    while not done.wait(DISCONNECT_POLL_S):
        if client_gone():
            concurrency.kill(worker)  # unwinds the upstream request, closing its connection
            log.info("client left during %s %s; upstream request aborted", request.method, request.path)
            raise ClientGoneError("client disconnected; request to Ollama aborted")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# -- reading -----------------------------------------------------------------------------------

@bp.get("/list")
@require(READ)
def list_models():
    """Downloaded models, as `ollama list` shows them."""
    services = _services()
    raw = services.ollama.list_models()
    services.model_index.observe_tags(raw)  # refreshes blob -> name in the background if changed
    models = [_downloaded(m) for m in raw]
    return {"models": models, "count": len(models)}


def _downloaded(model: dict[str, Any]) -> dict[str, Any]:
    details = model.get("details") if isinstance(model.get("details"), dict) else {}
    size = _int(model.get("size"))
    return {"name": model.get("name") or model.get("model") or "", "id": short_id(str(model.get("digest", ""))),
            "size": human_bytes(size), "size_bytes": size, "modified_at": model.get("modified_at"),
            "family": details.get("family"), "parameter_size": details.get("parameter_size"),
            "quantization": details.get("quantization_level")}


@bp.get("/loaded")
@require(READ)
def loaded_models():
    """Models in memory, as `ollama ps` shows them, with the driver's per-GPU figures."""
    services = _services()
    raw = services.ollama.list_loaded()
    services.model_index.observe_loaded(raw)
    polled = services.poller.latest
    measured = driver_vram_by_model(polled.snapshot if polled is not None else None)
    models = [{**_loaded(m), **loaded_vram_fields(str(m.get("name") or m.get("model") or ""), measured)}
              for m in raw]
    return {"models": models, "count": len(models)}


def _loaded(model: dict[str, Any]) -> dict[str, Any]:
    size, size_vram = _int(model.get("size")), _int(model.get("size_vram"))
    return {"name": model.get("name") or model.get("model") or "", "id": short_id(str(model.get("digest", ""))),
            "size": human_bytes(size), "processor": processor(size, size_vram), "size_bytes": size,
            "size_vram_bytes": size_vram, "expires_at": model.get("expires_at")}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# -- model operations --------------------------------------------------------------------------

@bp.post("/load")
@model_operation("model_load")
def load_model():
    """Load a model into memory; answers once Ollama has loaded it."""
    body, name = _read_model_name()
    services = _services()
    keep_alive = _keep_alive(body, services.settings.value("load_keep_alive"))  # PATCH /api/settings
    require_fit, make_room = _flag(body, "require_fit"), _flag(body, "make_room")
    unloaded: list[str] = []
    if require_fit or make_room:
        estimate = services.fit.estimate(name, local_only=True)
        if not estimate.fits:
            if not (make_room and estimate.unload_to_fit):
                raise ConflictError(f"{name} does not fit: {estimate.message()}", extra={"fit": estimate.to_dict()})
            unloaded = services.fit.unload_for_room(estimate.unload_to_fit)
    with _ollama_404_means(f"model {name} is not downloaded; download it first"):
        _call_while_client_waits(lambda: services.ollama.load(str(name), keep_alive))
    if unloaded:
        return _ok(f"Model {name} loaded (unloaded {', '.join(unloaded)} to make room)", name)
    return _ok(f"Model {name} loaded", name)


def _flag(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise BadRequestError(f"field {field} must be true or false")
    return value


@bp.post("/fit")
@require(READ)
def fit_model():
    """Estimate whether a model (downloaded or not) fits in free VRAM, and what to unload if not."""
    body, name = _read_model_name()
    try:
        num_ctx = parse_num_ctx(body.get("num_ctx"))
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    return _services().fit.estimate(name, num_ctx).to_dict()


def _keep_alive(body: dict[str, Any], default: str | int) -> str | int | float:
    raw = body.get("keep_alive")
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise BadRequestError("field keep_alive must be a duration string (5m, 1h) or a number of seconds")
    try:
        return parse_keep_alive(raw)
    except ValueError as exc:
        raise BadRequestError(f"field keep_alive {exc}") from None


@bp.post("/unload")
@model_operation("model_unload")
def unload_model():
    """Unload a model from memory (success, saying so, when it was not loaded)."""
    _, name = _read_model_name()
    client = _services().ollama
    loaded = {canonical_or_none(str(m.get("name") or m.get("model") or "")) for m in client.list_loaded()}
    if name.canonical not in loaded:
        return _ok(f"Model {name} was not loaded", name)
    try:
        client.unload(str(name))
    except OllamaError as exc:
        if exc.upstream_status != 404:
            raise
        return _ok(f"Model {name} was not loaded", name)  # deleted between /api/ps and now
    return _ok(f"Model {name} unloaded", name)


@bp.post("/download")
@model_operation("model_download")
def download_model():
    """Start downloading a model (202), or join the download already running."""
    _, name = _read_model_name()
    _, joined = _services().downloads.start(name.canonical, str(name))
    if joined:
        return _ok("Download already in progress; joined it", name, 202)
    return _ok("Download started", name, 202)


@bp.get("/downloads")
@require(READ)
def list_downloads():
    """Running downloads and those finished in the last hour."""
    return {"downloads": _services().downloads.list()}


@bp.post("/download/cancel")
@model_operation("model_download_cancel")
def cancel_download():
    """Cancel a running download."""
    _, name = _read_model_name()
    try:
        _services().downloads.cancel(name.canonical)
    except NotFoundError:
        raise NotFoundError(f"no download of {name} is running") from None
    return _ok("Download cancelled", name)


@bp.post("/delete")
@model_operation("model_delete")
def delete_model():
    """Delete a downloaded model."""
    _, name = _read_model_name()
    services = _services()
    if services.downloads.is_running(name.canonical):
        raise ConflictError(f"a download of {name} is running; cancel it first")
    with _ollama_404_means(f"model {name} is not downloaded"):
        services.ollama.delete(str(name))
    return _ok(f"Model {name} deleted", name)
