"""received messages and the outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-23 01:31:59.463399
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("channel", sa.String(length=16), nullable=False, comment="smtp | imap | http"),
        sa.Column(
            "mail_from", sa.Text(), nullable=False, comment="envelope sender; empty for the null sender"
        ),
        sa.Column("rcpt_tos", sa.JSON(), nullable=False, comment="envelope recipients"),
        sa.Column("peer", sa.String(length=64), nullable=False, comment="client address and port"),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("received_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True, comment="the Message-ID header, if any"),
        sa.Column("raw", sa.LargeBinary(), nullable=False, comment="the bytes exactly as received"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_messages_received_at"), ["received_at"], unique=False)

    op.create_table(
        "message_headers",
        sa.Column("message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("from_header", sa.Text(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("date_header", sa.Text(), nullable=True),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("defects", sa.Integer(), nullable=False, comment="parser defects found in the headers"),
        sa.Column("parsed_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_message_headers_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_headers")),
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("kind", sa.String(length=32), nullable=False, comment="the pipeline step to run"),
        sa.Column("message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            postkasse.store.schema.UTCDateTime(timezone=True),
            nullable=False,
            comment="when the redriver may send it again",
        ),
        sa.Column("created_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name=op.f("ck_outbox_state")),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name=op.f("fk_outbox_message_id_messages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_message_id"), ["message_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_outbox_state_next_attempt_at"), ["state", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_state_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_outbox_message_id"))

    op.drop_table("outbox")
    op.drop_table("message_headers")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_received_at"))
        batch_op.drop_index(batch_op.f("ix_messages_message_id"))

    op.drop_table("messages")
