"""deadlines, alerts and statistics

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 04:21:11.302762
"""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema
from postkasse.clock import COPENHAGEN

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "periodic_runs",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column(
            "finished_at",
            postkasse.store.schema.UTCDateTime(timezone=True),
            nullable=False,
            comment="the last run that completed",
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_periodic_runs")),
    )
    op.create_table(
        "deadline_alerts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("referral_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("deadline", sa.String(length=16), nullable=False, comment="emptying | handling | urgent"),
        sa.Column(
            "level",
            sa.String(length=16),
            nullable=False,
            comment="warning | breach; urgent | triage for urgent",
        ),
        sa.Column(
            "municipality",
            sa.String(length=4),
            nullable=False,
            comment="the queue alerted; empty: operations only",
        ),
        sa.Column("due_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("raised_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "resolved_at",
            postkasse.store.schema.UTCDateTime(timezone=True),
            nullable=True,
            comment="set when the condition cleared",
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_deadline_alerts_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deadline_alerts")),
        sa.UniqueConstraint(
            "referral_id",
            "deadline",
            "level",
            "municipality",
            name=op.f("uq_deadline_alerts_referral_id_deadline_level_municipality"),
        ),
    )
    with op.batch_alter_table("deadline_alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deadline_alerts_resolved_at"), ["resolved_at"], unique=False)

    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "return_reason",
                sa.String(length=32),
                nullable=True,
                comment="returned: the reason's code, for statistics",
            )
        )
        batch_op.add_column(
            sa.Column(
                "sender_kind",
                sa.String(length=24),
                server_default="other",
                nullable=False,
                comment="gp, hospital unit...",
            )
        )
        batch_op.add_column(
            sa.Column(
                "received_at",
                postkasse.store.schema.UTCDateTime(timezone=True),
                nullable=True,
                comment="when the mailbox accepted the message",
            )
        )
        batch_op.add_column(
            sa.Column(
                "queued_at",
                postkasse.store.schema.UTCDateTime(timezone=True),
                nullable=True,
                comment="when it entered its municipality's queue",
            )
        )
        batch_op.add_column(
            sa.Column(
                "warn_at",
                postkasse.store.schema.UTCDateTime(timezone=True),
                nullable=True,
                comment="handling deadline: the warning",
            )
        )
        batch_op.add_column(
            sa.Column(
                "due_at",
                postkasse.store.schema.UTCDateTime(timezone=True),
                nullable=True,
                comment="handling deadline, fixed when routed or assigned",
            )
        )
        batch_op.add_column(
            sa.Column("pulled_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("handled_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "exception",
                sa.String(length=24),
                nullable=True,
                comment="authority_case | medical_reason: clock stopped",
            )
        )

    _backfill()

    with op.batch_alter_table("referrals", schema=None) as batch_op:
        for column in ("received_at", "warn_at", "due_at"):
            batch_op.alter_column(
                column, existing_type=postkasse.store.schema.UTCDateTime(timezone=True), nullable=False
            )
        batch_op.create_check_constraint(
            op.f("ck_referrals_exception"),
            "exception IS NULL OR exception IN ('authority_case', 'medical_reason')",
        )
        batch_op.create_index(batch_op.f("ix_referrals_received_at"), ["received_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_referrals_state_queued_at"), ["state", "queued_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_referrals_state_warn_at"), ["state", "warn_at"], unique=False)


def _days_after(received_at: datetime, days: int) -> datetime:
    """The same Copenhagen wall-clock time `days` calendar days later, in UTC."""
    local = received_at.astimezone(COPENHAGEN).replace(tzinfo=None) + timedelta(days=days)
    return local.replace(tzinfo=COPENHAGEN).astimezone(UTC)


def _backfill() -> None:
    """Existing referrals get their times from their message and their events, and the rules' defaults
    as this revision had them: due 8 calendar days after receipt, warned 2 days before."""
    from postkasse.store.schema import messages, referral_events, referrals

    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            referrals.c.id,
            referrals.c.state,
            referrals.c.outcome,
            referrals.c.created_at,
            messages.c.received_at,
        ).join(messages, messages.c.id == referrals.c.message_id)
    ).all()
    for row in rows:
        moments = {
            action: at
            for action, at in conn.execute(
                sa.select(referral_events.c.action, sa.func.min(referral_events.c.at))
                .where(referral_events.c.referral_id == row.id)
                .group_by(referral_events.c.action)
            ).all()
        }
        warn_at, due_at = _days_after(row.received_at, 6), _days_after(row.received_at, 8)
        conn.execute(
            sa.update(referrals)
            .where(referrals.c.id == row.id)
            .values(
                received_at=row.received_at,
                queued_at=None
                if row.state == "triage"
                else moments.get("assign", moments.get("routed", row.created_at)),
                warn_at=warn_at,
                due_at=due_at,
                pulled_at=moments.get("pull"),
                handled_at=moments.get("decide"),
                return_reason="other" if row.outcome == "returned" else None,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_referrals_exception"), type_="check")
        batch_op.drop_index(batch_op.f("ix_referrals_state_warn_at"))
        batch_op.drop_index(batch_op.f("ix_referrals_state_queued_at"))
        batch_op.drop_index(batch_op.f("ix_referrals_received_at"))
        batch_op.drop_column("exception")
        batch_op.drop_column("handled_at")
        batch_op.drop_column("pulled_at")
        batch_op.drop_column("due_at")
        batch_op.drop_column("warn_at")
        batch_op.drop_column("queued_at")
        batch_op.drop_column("received_at")
        batch_op.drop_column("sender_kind")
        batch_op.drop_column("return_reason")

    with op.batch_alter_table("deadline_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deadline_alerts_resolved_at"))

    op.drop_table("deadline_alerts")
    op.drop_table("periodic_runs")
