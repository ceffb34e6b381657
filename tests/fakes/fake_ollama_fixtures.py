"""Pytest fixtures for the fake Ollama: one process per test session, reset before each test."""
from __future__ import annotations

import pytest

from tests.fakes.fake_ollama import FakeOllama


@pytest.fixture(scope="session")
def fake_ollama_server():
    """The fake Ollama process, started once per session."""
    fake = FakeOllama().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_ollama(fake_ollama_server: FakeOllama) -> FakeOllama:
    """The fake Ollama, running (restarted on its port if a test stopped it) and reset to defaults."""
    fake_ollama_server.start()
    fake_ollama_server.reset()
    return fake_ollama_server
