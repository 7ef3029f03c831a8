"""Alembic, driven from code: `postkasse migrate` and `serve` bring the schema to head."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from postkasse.store.engine import Store
from postkasse.store.schema import metadata


def alembic_config(store: Store) -> Config:
    config = Config()
    config.set_main_option("script_location", "postkasse.store:migrations")
    config.attributes["store"] = store
    return config


def upgrade(store: Store, revision: str = "head") -> None:
    command.upgrade(alembic_config(store), revision)


def current(store: Store) -> str | None:
    with store.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def drift(store: Store) -> list[Any]:
    """Differences between the migrated database and schema.py; empty when they agree."""
    with store.read() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))
