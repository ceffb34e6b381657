"""Alembic's environment: the app runs it at start-up with its own connection (db.Database.migrate)."""
from alembic import context

import db.models  # noqa: F401  (registers every table on db.Base.metadata)
from db import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from the command line
    from sqlalchemy import create_engine

    connection = create_engine(config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
