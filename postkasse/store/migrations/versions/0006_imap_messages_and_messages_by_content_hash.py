"""IMAP messages taken, and messages by content hash

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 05:08:56.651402
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imap_messages",
        sa.Column(
            "account", sa.String(length=64), nullable=False, comment="the [[imap]] account's configured name"
        ),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("recorded_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_imap_messages_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("account", "folder", "uidvalidity", "uid", name=op.f("pk_imap_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_sha256"))

    op.drop_table("imap_messages")
