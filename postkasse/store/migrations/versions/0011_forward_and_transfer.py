"""Forwarding to a municipal unit and transferring to another municipality

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 02:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = postkasse.store.schema.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "unit",
                sa.String(64),
                nullable=True,
                comment="forwarded: the unit's id in municipalities.toml",
            )
        )
        batch_op.add_column(
            sa.Column(
                "forward_mail_id",
                ID,
                nullable=True,
                comment="forwarded: the mail to the unit (outgoing_mail)",
            )
        )
        batch_op.add_column(sa.Column("forwarded_at", TIME(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column(
                "transferred_from",
                sa.String(4),
                nullable=True,
                comment="the municipality it was last moved from",
            )
        )
        batch_op.add_column(sa.Column("transferred_at", TIME(timezone=True), nullable=True))
    op.create_table(
        "transfers",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("referral_id", ID, nullable=False),
        sa.Column("from_municipality", sa.String(4), nullable=False),
        sa.Column("to_municipality", sa.String(4), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False, comment="moved | wrong_municipality"),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("at", TIME(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_transfers_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
    )
    op.create_index(op.f("ix_transfers_referral_id_id"), "transfers", ["referral_id", "id"], unique=False)
    op.create_index(op.f("ix_transfers_at"), "transfers", ["at"], unique=False)


def downgrade() -> None:
    op.drop_table("transfers")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        for column in ("transferred_at", "transferred_from", "forwarded_at", "forward_mail_id", "unit"):
            batch_op.drop_column(column)
