"""MedCom letters remember their FHIR thread (Communication.identifier)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 07:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("medcom_letters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "thread",
                sa.String(length=128),
                nullable=True,
                comment="FHIR Communication.identifier, kept across replies",
            )
        )
        batch_op.create_index(batch_op.f("ix_medcom_letters_thread"), ["thread"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("medcom_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_medcom_letters_thread"))
        batch_op.drop_column("thread")
