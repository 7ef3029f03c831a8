"""Joint pathways: pathways, their meetings with the action plan, explanations, and alerts per meeting round

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 02:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = postkasse.store.schema.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("deadline_alerts", schema=None) as batch_op:
        batch_op.alter_column(
            "deadline",
            existing_type=sa.String(16),
            type_=sa.String(24),
            existing_nullable=False,
            comment="emptying | handling | urgent | startup_meeting | follow_up_meeting",
            existing_comment="emptying | handling | urgent",
        )
        batch_op.add_column(
            sa.Column(
                "cycle",
                sa.Integer(),
                server_default="0",
                nullable=False,
                comment="which round of a repeating deadline: a pathway's n-th meeting; 0 for the others",
            )
        )
        batch_op.drop_constraint("uq_deadline_alerts_referral_id_deadline_level_municipality", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_deadline_alerts_referral_id_deadline_cycle_level_municipality"),
            ["referral_id", "deadline", "cycle", "level", "municipality"],
        )
    op.create_table(
        "pathways",
        sa.Column("referral_id", ID, nullable=False),
        sa.Column("municipality", sa.String(4), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column(
            "responsible", sa.JSON(), nullable=False, comment="indsatsansvarlig: name, title, telephone"
        ),
        sa.Column(
            "started_at",
            TIME(timezone=True),
            nullable=False,
            comment="when the committee decided the pathway",
        ),
        sa.Column("closed_at", TIME(timezone=True), nullable=True),
        sa.Column("meetings_held", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "deadline",
            sa.String(24),
            nullable=True,
            comment="startup_meeting | follow_up_meeting; null: none runs",
        ),
        sa.Column("warn_at", TIME(timezone=True), nullable=True),
        sa.Column("due_at", TIME(timezone=True), nullable=True),
        sa.Column("updated_at", TIME(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('active', 'closed')", name=op.f("ck_pathways_state")),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_pathways_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("referral_id", name=op.f("pk_pathways")),
    )
    op.create_index(op.f("ix_pathways_state_warn_at"), "pathways", ["state", "warn_at"], unique=False)
    op.create_table(
        "meetings",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("referral_id", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, comment="opstart | opfoelgning | afslutning"),
        sa.Column("held_at", TIME(timezone=True), nullable=False),
        sa.Column("place", sa.Text(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column(
            "responsible",
            sa.JSON(),
            nullable=False,
            comment="the responsible professional named in this plan",
        ),
        sa.Column("plan", sa.JSON(), nullable=False, comment="the action plan as it stood after the meeting"),
        sa.Column(
            "due_at",
            TIME(timezone=True),
            nullable=True,
            comment="the meeting deadline that ran when it was held",
        ),
        sa.Column("recorded_by", sa.Text(), nullable=False),
        sa.Column("recorded_at", TIME(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('opstart', 'opfoelgning', 'afslutning')", name=op.f("ck_meetings_kind")),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["pathways.referral_id"], name=op.f("fk_meetings_referral_id_pathways")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meetings")),
    )
    op.create_index(op.f("ix_meetings_referral_id_id"), "meetings", ["referral_id", "id"], unique=False)
    op.create_table(
        "pathway_explanations",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("referral_id", ID, nullable=False),
        sa.Column("deadline", sa.String(24), nullable=False),
        sa.Column("due_at", TIME(timezone=True), nullable=True, comment="the due time explained"),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("at", TIME(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["pathways.referral_id"],
            name=op.f("fk_pathway_explanations_referral_id_pathways"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathway_explanations")),
    )
    op.create_index(
        op.f("ix_pathway_explanations_referral_id_id"),
        "pathway_explanations",
        ["referral_id", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("pathway_explanations")
    op.drop_table("meetings")
    op.drop_table("pathways")
    with op.batch_alter_table("deadline_alerts", schema=None) as batch_op:
        batch_op.drop_constraint(
            "uq_deadline_alerts_referral_id_deadline_cycle_level_municipality", type_="unique"
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_deadline_alerts_referral_id_deadline_level_municipality"),
            ["referral_id", "deadline", "level", "municipality"],
        )
        batch_op.drop_column("cycle")
        batch_op.alter_column(
            "deadline",
            existing_type=sa.String(24),
            type_=sa.String(16),
            existing_nullable=False,
            comment="emptying | handling | urgent",
            existing_comment="emptying | handling | urgent | startup_meeting | follow_up_meeting",
        )
