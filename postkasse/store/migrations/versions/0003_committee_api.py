"""tokens, audit, outgoing mail, threads; outbox targets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 02:01:29.386013
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column(
            "municipality",
            sa.String(length=4),
            nullable=True,
            comment="for committee tokens: the one queue it sees",
        ),
        sa.Column(
            "secret_hash",
            sa.Text(),
            nullable=False,
            comment="argon2id hash; the token itself is never stored",
        ),
        sa.Column("created_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(scope = 'committee') = (municipality IS NOT NULL)",
            name=op.f("ck_tokens_committee_has_municipality"),
        ),
        sa.CheckConstraint("scope IN ('committee', 'ops', 'sender')", name=op.f("ck_tokens_scope")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_tokens_name")),
    )
    op.create_table(
        "audit",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False, comment="token name, or ops:NAME from the shell"),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("referral_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_audit_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_referral_id_id"), ["referral_id", "id"], unique=False)

    op.create_table(
        "outgoing_mail",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("kind", sa.String(length=24), nullable=False, comment="receipt | committee_message"),
        sa.Column("referral_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "answers_message",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
            comment="the message answered",
        ),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("message_id_header", sa.Text(), nullable=False, comment="our Message-ID"),
        sa.Column("raw", sa.LargeBinary(), nullable=True, comment="the mail as sent; empty when suppressed"),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("suppressed_reason", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claimed_until", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'sending', 'sent', 'failed', 'suppressed')",
            name=op.f("ck_outgoing_mail_state"),
        ),
        sa.ForeignKeyConstraint(
            ["answers_message"], ["messages.id"], name=op.f("fk_outgoing_mail_answers_message_messages")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_outgoing_mail_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outgoing_mail")),
        sa.UniqueConstraint("message_id_header", name=op.f("uq_outgoing_mail_message_id_header")),
    )
    with op.batch_alter_table("outgoing_mail", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outgoing_mail_answers_message"), ["answers_message"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_outgoing_mail_recipient_kind_created_at"),
            ["recipient", "kind", "created_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_outgoing_mail_state"), ["state"], unique=False)

    op.create_table(
        "thread",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("referral_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False, comment="to_sender | from_sender"),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "message_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
            comment="the sender's mail",
        ),
        sa.Column(
            "outgoing_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
            comment="our mail",
        ),
        sa.CheckConstraint("direction IN ('to_sender', 'from_sender')", name=op.f("ck_thread_direction")),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], name=op.f("fk_thread_message_id_messages")),
        sa.ForeignKeyConstraint(
            ["outgoing_id"], ["outgoing_mail.id"], name=op.f("fk_thread_outgoing_id_outgoing_mail")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_thread_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thread")),
    )
    with op.batch_alter_table("thread", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_thread_referral_id_id"), ["referral_id", "id"], unique=False)

    # The outbox now names any target (a message, an outgoing mail); pending work keeps its target.
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_message_id"))
        batch_op.drop_constraint(batch_op.f("fk_outbox_message_id_messages"), type_="foreignkey")
        batch_op.alter_column(
            "message_id",
            new_column_name="target_id",
            existing_nullable=False,
            existing_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            comment="what the step works on, by the step's kind",
        )
    op.create_index(op.f("ix_outbox_kind_target_id"), "outbox", ["kind", "target_id"], unique=False)

    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unread_reply", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_column("unread_reply")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_kind_target_id"))
        batch_op.alter_column(
            "target_id",
            new_column_name="message_id",
            existing_nullable=False,
            existing_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            comment=None,
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_outbox_message_id_messages"), "messages", ["message_id"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_outbox_message_id"), ["message_id"], unique=False)

    with op.batch_alter_table("thread", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_thread_referral_id_id"))

    op.drop_table("thread")
    with op.batch_alter_table("outgoing_mail", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outgoing_mail_state"))
        batch_op.drop_index(batch_op.f("ix_outgoing_mail_recipient_kind_created_at"))
        batch_op.drop_index(batch_op.f("ix_outgoing_mail_answers_message"))

    op.drop_table("outgoing_mail")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_referral_id_id"))
        batch_op.drop_index(batch_op.f("ix_audit_at"))

    op.drop_table("audit")
    op.drop_table("tokens")
