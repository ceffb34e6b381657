"""The one model-name validator: `[registry/][namespace/]model[:tag]`, as Ollama parses it.

Every model route runs a name through `parse_model_name` before anything reaches Ollama; a bad
name is a 400 whose message names the problem.

>>> parse_model_name("llama3.2")
ModelName(registry=None, namespace=None, model='llama3.2', tag=None)
>>> str(parse_model_name("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"))
'hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M'
>>> parse_model_name("evil.com/x/y")
Traceback (most recent call last):
...
ollama_client.names.InvalidModelName: invalid model_name: registry 'evil.com' is not allowed (OLLAMA_ALLOWED_REGISTRIES: registry.ollama.ai, hf.co)
>>> parse_model_name("../../etc/passwd")
Traceback (most recent call last):
...
ollama_client.names.InvalidModelName: invalid model_name: '..' is not allowed
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from errors import BadRequestError

DEFAULT_REGISTRIES = ("registry.ollama.ai", "hf.co")
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_PART = 80
MAX_REGISTRY = 350  # Ollama's limit on the host part
MAX_NAME = MAX_REGISTRY + 3 * (MAX_PART + 1)

_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_REGISTRY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(:[0-9]{1,5})?")
_SHELL_CHARS = set(";&|`$<>(){}[]*?!~#%^=+,'\"\\")


class InvalidModelName(BadRequestError):
    """A model name outside the contract's grammar or naming a registry that is not allowed."""

    def __init__(self, problem: str):
        super().__init__(f"invalid model_name: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class ModelName:
    """A parsed model name; str() gives it back exactly as written."""

    registry: str | None
    namespace: str | None
    model: str
    tag: str | None

    def __str__(self) -> str:
        text = "/".join(p for p in (self.registry, self.namespace, self.model) if p is not None)
        return f"{text}:{self.tag}" if self.tag is not None else text

    @property
    def canonical(self) -> str:
        """The fully qualified, lower-cased name Ollama compares (defaults filled in).

        >>> parse_model_name("Llama3").canonical == parse_model_name("registry.ollama.ai/library/llama3:latest").canonical
        True
        """
        return (f"{self.registry or DEFAULT_REGISTRY}/{self.namespace or DEFAULT_NAMESPACE}/"
                f"{self.model}:{self.tag or DEFAULT_TAG}").lower()


def parse_model_name(name: object, allowed_registries: Iterable[str] = DEFAULT_REGISTRIES) -> ModelName:
    """Parse and validate a model name, or raise InvalidModelName (a 400) naming the problem."""
    if not isinstance(name, str):
        raise InvalidModelName("must be a string")
    if name == "":
        raise InvalidModelName("must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidModelName(f"too long ({len(name)} characters; at most {MAX_NAME})")
    for ch in name:
        if ord(ch) > 127:
            raise InvalidModelName(f"non-ASCII character {ch!r} is not allowed")
        if ord(ch) < 32 or ord(ch) == 127:
            raise InvalidModelName(f"control character {ch!r} is not allowed")
    if any(ch.isspace() for ch in name):
        raise InvalidModelName("spaces are not allowed")
    if ".." in name:
        raise InvalidModelName("'..' is not allowed")
    if "@" in name:
        raise InvalidModelName("digests ('@sha256:...') are not accepted; name the model and tag")
    bad = sorted({ch for ch in name if ch in _SHELL_CHARS})
    if bad:
        raise InvalidModelName(f"character {bad[0]!r} is not allowed")
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise InvalidModelName("empty path part (leading, trailing or double '/')")

    rest, tag = name, None
    # As Ollama's ParseName: a ':' after the last '/' starts the tag ('/' cannot be in a tag).
    if name.rfind(":") > name.rfind("/"):
        rest, _, tag = name.rpartition(":")
        _check_part(tag, "tag", _MODEL_OR_TAG, MAX_PART, "letters, digits, '_', '-' and '.'")
    parts = rest.split("/")
    if len(parts) > 3:
        raise InvalidModelName("too many '/' parts (at most registry/namespace/model:tag)")
    registry = parts[0] if len(parts) == 3 else None
    namespace = parts[-2] if len(parts) >= 2 else None
    model = parts[-1]
    _check_part(model, "model", _MODEL_OR_TAG, MAX_PART, "letters, digits, '_', '-' and '.'")
    if namespace is not None:
        _check_part(namespace, "namespace", _NAMESPACE, MAX_PART, "letters, digits, '_' and '-'")
    if registry is not None:
        _check_part(registry, "registry", _REGISTRY, MAX_REGISTRY, "a host name with an optional :port")
        allowed = tuple(r.lower() for r in allowed_registries)
        if registry.lower() not in allowed:
            raise InvalidModelName(f"registry {registry!r} is not allowed "
                                   f"(OLLAMA_ALLOWED_REGISTRIES: {', '.join(allowed) or 'none'})")
    return ModelName(registry=registry, namespace=namespace, model=model, tag=tag)


def _check_part(value: str, what: str, pattern: re.Pattern[str], max_length: int, allowed: str) -> None:
    if value == "":
        raise InvalidModelName(f"the {what} part is empty")
    if len(value) > max_length:
        raise InvalidModelName(f"the {what} part is too long ({len(value)} characters; at most {max_length})")
    if not (value[0].isascii() and (value[0].isalnum() or value[0] == "_")):
        raise InvalidModelName(f"the {what} part must start with a letter, digit or '_'")
    if not pattern.fullmatch(value):
        offending = next((ch for ch in value[1:] if not pattern.fullmatch("a" + ch)), None)
        detail = f" (found {offending!r})" if offending else ""
        raise InvalidModelName(f"the {what} part may contain only {allowed}{detail}")


def name_pattern(allowed_registries: Iterable[str] = DEFAULT_REGISTRIES) -> str:
    """Return a regular expression (ECMA-262 and Python alike) for exactly the names parse_model_name accepts.

    For the OpenAPI document's ModelName, so generated clients and fuzzers know the grammar.

    >>> import re; [bool(re.search(name_pattern(), n)) for n in ("llama3.2:latest", "HF.co/a/b", "a..b", "x/y/z")]
    [True, True, False, False]
    """
    model_or_tag = f"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_PART - 1}}}"
    namespace = f"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{MAX_PART - 1}}}"
    # Registries compare ignoring case; the character classes spell that out (no regex flags in JSON Schema).
    registries = "|".join("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in r)
                          for r in allowed_registries)
    registry = f"(?:{registries})/{namespace}/|" if registries else ""
    # No "..", no line break anywhere ($ alone would let a trailing newline through in Python).
    return rf"^(?!.*\.\.)(?!.*\n)(?:{registry}{namespace}/)?{model_or_tag}(?::{model_or_tag})?$"


def canonical_or_none(name: str) -> str | None:
    """Return the canonical form of a name Ollama reported (any registry), or None if it does not parse.

    >>> canonical_or_none("llama3.2:latest") == canonical_or_none("registry.ollama.ai/library/llama3.2")
    True
    """
    registry = name.split("/", 1)[0] if name.count("/") == 2 else None
    try:
        return parse_model_name(name, (registry,) if registry else ()).canonical
    except InvalidModelName:
        return None
