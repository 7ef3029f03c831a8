"""Indexes for the web inbox's queue page (its order, today's emptying, the handled tab) and for the
gauges read at every scrape (undelivered forwards, the oldest content kept)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 03:40:00.000000
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_referrals_municipality_state_urgent_due_at_id"),
        "referrals",
        ["municipality", "state", "urgent", "due_at", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_referrals_municipality_state_queued_at"),
        "referrals",
        ["municipality", "state", "queued_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_referrals_municipality_state_handled_at"),
        "referrals",
        ["municipality", "state", "handled_at"],
        unique=False,
    )

    op.create_index(op.f("ix_referrals_unit"), "referrals", ["unit"], unique=False)
    op.create_index(
        op.f("ix_messages_purged_at_received_at"), "messages", ["purged_at", "received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_messages_purged_at_received_at"), table_name="messages")
    op.drop_index(op.f("ix_referrals_unit"), table_name="referrals")
    op.drop_index(op.f("ix_referrals_municipality_state_handled_at"), table_name="referrals")
    op.drop_index(op.f("ix_referrals_municipality_state_queued_at"), table_name="referrals")
    op.drop_index(op.f("ix_referrals_municipality_state_urgent_due_at_id"), table_name="referrals")
