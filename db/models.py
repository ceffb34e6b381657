"""Every feature's models, imported so that Alembic sees the whole schema (migrations/env.py)."""
import alerts.models  # noqa: F401
import audit.models  # noqa: F401
import auth.models  # noqa: F401
import ollama_client.history_models  # noqa: F401
import settings.models  # noqa: F401
import usage.models  # noqa: F401
