"""MedCom letters and answers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 04:57:42.333995
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "medcom_letters",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "sender",
            sa.String(length=64),
            nullable=False,
            comment="whose identifiers these are: EAN, SOR or channel",
        ),
        sa.Column(
            "envelope_id", sa.String(length=64), nullable=False, comment="Envelope/Identifier or Bundle.id"
        ),
        sa.Column(
            "letter_id", sa.String(length=64), nullable=False, comment="Letter/Identifier or MessageHeader.id"
        ),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("referral_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("duplicate_of", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["duplicate_of"],
            ["medcom_letters.id"],
            name=op.f("fk_medcom_letters_duplicate_of_medcom_letters"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_medcom_letters_message_id_messages")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_medcom_letters_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_medcom_letters")),
        sa.UniqueConstraint("message_id", "letter_id", name=op.f("uq_medcom_letters_message_id_letter_id")),
    )
    with op.batch_alter_table("medcom_letters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_medcom_letters_sender_envelope_id"), ["sender", "envelope_id"], unique=False
        )

    op.create_table(
        "medcom_answers",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column(
            "message_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
            comment="the message answered",
        ),
        sa.Column("referral_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "kind",
            sa.String(length=32),
            nullable=False,
            comment="XCTL02 | XCTL03 | Acknowledgement | XDIS91 | ...",
        ),
        sa.Column("code", sa.String(length=32), nullable=False, comment="ok, or the refusal code"),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column(
            "recipient",
            sa.Text(),
            nullable=False,
            comment="mail address, or api:TOKEN for the sender to pull",
        ),
        sa.Column(
            "outgoing_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
            comment="when sent by mail",
        ),
        sa.Column("created_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_medcom_answers_message_id_messages")
        ),
        sa.ForeignKeyConstraint(
            ["outgoing_id"], ["outgoing_mail.id"], name=op.f("fk_medcom_answers_outgoing_id_outgoing_mail")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_medcom_answers_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_medcom_answers")),
    )
    with op.batch_alter_table("medcom_answers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_medcom_answers_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_medcom_answers_recipient_id"), ["recipient", "id"], unique=False)

    op.create_table(
        "medcom_first_letters",
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("letter_id", sa.String(length=64), nullable=False),
        sa.Column("first", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["first"], ["medcom_letters.id"], name=op.f("fk_medcom_first_letters_first_medcom_letters")
        ),
        sa.PrimaryKeyConstraint("sender", "letter_id", name=op.f("pk_medcom_first_letters")),
    )
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "letter_id",
                sa.String(length=64),
                server_default="",
                nullable=False,
                comment="MedCom letter; empty for mail",
            )
        )
        batch_op.drop_constraint(batch_op.f("uq_referrals_message_id"), type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_referrals_message_id_letter_id"), ["message_id", "letter_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_referrals_message_id_letter_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_referrals_message_id"), ["message_id"])
        batch_op.drop_column("letter_id")

    op.drop_table("medcom_first_letters")
    with op.batch_alter_table("medcom_answers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_medcom_answers_recipient_id"))
        batch_op.drop_index(batch_op.f("ix_medcom_answers_message_id"))

    op.drop_table("medcom_answers")
    with op.batch_alter_table("medcom_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_medcom_letters_sender_envelope_id"))

    op.drop_table("medcom_letters")
