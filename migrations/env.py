"""Alembic's environment: the app runs it at start-up with its own connection (db/migrate.py)."""
from alembic import context

config = context.config
connection = config.attributes.get("connection")
target_metadata = None  # an upgrade runs the scripts; only autogenerate compares with the models
if connection is None:  # `alembic revision --autogenerate` from the command line
    from sqlalchemy import create_engine

    import db.models  # noqa: F401  (registers every table on db.Base.metadata)
    from db import Base

    target_metadata = Base.metadata
    connection = create_engine(config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=target_metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
