"""PLACEHOLDER: fixtures for the fake Ollama (owned by the Ollama engineer)."""
