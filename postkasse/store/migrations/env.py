"""Alembic environment: runs against the Store handed over in config.attributes."""

from alembic import context

from postkasse.store.schema import metadata

store = context.config.attributes["store"]
with store.schema_change() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
