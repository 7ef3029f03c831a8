"""IMAP account leases: one daemon reads an account at a time

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 07:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imap_leases",
        sa.Column(
            "account", sa.String(length=64), nullable=False, comment="the [[imap]] account's configured name"
        ),
        sa.Column(
            "holder",
            sa.Text(),
            nullable=False,
            comment="host:pid:token of the daemon that reads the account",
        ),
        sa.Column("taken_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_imap_leases")),
    )


def downgrade() -> None:
    op.drop_table("imap_leases")
