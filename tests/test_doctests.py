"""Every doctest in the server's own modules runs (pure helpers: formatting, names, parsing)."""
import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", "venv", "node_modules", "tests", "bench", ".git", "data"}


def _modules_with_doctests() -> list[str]:
    names = []
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if SKIP_DIRS & set(relative.parts) or ">>> " not in path.read_text(encoding="utf-8"):
            continue
        names.append(".".join(relative.with_suffix("").parts).removesuffix(".__init__"))
    return names


MODULES = _modules_with_doctests()


def test_doctests_are_found():
    assert "config" in MODULES and "ollama_client.formatting" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has '>>> ' but no doctest ran"
    assert result.failed == 0
