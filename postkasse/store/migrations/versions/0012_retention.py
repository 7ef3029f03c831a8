"""Retention: when a message's and a referral's content was removed, and tokens' extra rights

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 03:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COMMENT = "content removed (retention or erasure)"


def upgrade() -> None:
    for table in ("messages", "referrals"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column(
                    "purged_at",
                    postkasse.store.schema.UTCDateTime(timezone=True),
                    nullable=True,
                    comment=COMMENT,
                )
            )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "rights",
                sa.JSON(),
                server_default="[]",
                nullable=False,
                comment="extra rights: subject_access",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("rights")
    for table in ("referrals", "messages"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("purged_at")
