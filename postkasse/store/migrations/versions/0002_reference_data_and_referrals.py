"""reference data, referrals and their events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 01:46:29.492455
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "postal_codes",
        sa.Column("postal_code", sa.String(length=4), nullable=False),
        sa.Column("municipality", sa.String(length=4), nullable=False),
        sa.Column("city", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("postal_code", "municipality", name=op.f("pk_postal_codes")),
    )
    op.create_table(
        "refdata_imports",
        sa.Column("kind", sa.String(length=16), nullable=False, comment="postnord | roads | registry"),
        sa.Column("imported_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False, comment="the file name imported"),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_refdata_imports")),
    )
    op.create_table(
        "registry_persons",
        sa.Column("cpr", sa.String(length=10), nullable=False),
        sa.Column("municipality", sa.String(length=4), nullable=False),
        sa.Column("road_name", sa.Text(), nullable=True),
        sa.Column("house_number", sa.String(length=8), nullable=True),
        sa.Column("postal_code", sa.String(length=4), nullable=True),
        sa.PrimaryKeyConstraint("cpr", name=op.f("pk_registry_persons")),
    )
    op.create_table(
        "road_segments",
        sa.Column("municipality", sa.String(length=4), nullable=False),
        sa.Column("road_code", sa.String(length=4), nullable=False),
        sa.Column("postal_code", sa.String(length=4), nullable=False),
        sa.Column("road_name", sa.Text(), nullable=False),
        sa.Column("road_key", sa.Text(), nullable=False, comment="normalised road name for lookups"),
        sa.PrimaryKeyConstraint("municipality", "road_code", "postal_code", name=op.f("pk_road_segments")),
    )
    with op.batch_alter_table("road_segments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_road_segments_postal_code_road_key"), ["postal_code", "road_key"], unique=False
        )

    op.create_table(
        "referrals",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("municipality", sa.String(length=4), nullable=True, comment="null while in triage"),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column(
            "triage_reason",
            sa.String(length=32),
            nullable=True,
            comment="stable code, while or since in triage",
        ),
        sa.Column("reasons", sa.JSON(), nullable=False, comment="routing reason codes"),
        sa.Column(
            "explanation", sa.JSON(), nullable=False, comment="routing explanation, sentence by sentence"
        ),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("cpr", sa.String(length=10), nullable=True),
        sa.Column("patient_name", sa.Text(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column(
            "outcome_detail",
            sa.Text(),
            nullable=True,
            comment="the unit forwarded to, or the reason returned",
        ),
        sa.Column("created_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('forwarded', 'returned', 'joint_pathway', 'closed')",
            name=op.f("ck_referrals_outcome"),
        ),
        sa.CheckConstraint(
            "state = 'triage' OR municipality IS NOT NULL", name=op.f("ck_referrals_routed_has_municipality")
        ),
        sa.CheckConstraint(
            "state IN ('triage', 'new', 'pulled', 'handled')", name=op.f("ck_referrals_state")
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_referrals_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
        sa.UniqueConstraint("message_id", name=op.f("uq_referrals_message_id")),
    )
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_referrals_municipality_state_id"), ["municipality", "state", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_referrals_state_id"), ["state", "id"], unique=False)

    op.create_table(
        "referral_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("referral_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "actor", sa.Text(), nullable=False, comment="who: system, an operator or a committee token name"
        ),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_referral_events_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_events")),
    )
    with op.batch_alter_table("referral_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_referral_events_referral_id_id"), ["referral_id", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("referral_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referral_events_referral_id_id"))

    op.drop_table("referral_events")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referrals_state_id"))
        batch_op.drop_index(batch_op.f("ix_referrals_municipality_state_id"))

    op.drop_table("referrals")
    with op.batch_alter_table("road_segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_road_segments_postal_code_road_key"))

    op.drop_table("road_segments")
    op.drop_table("registry_persons")
    op.drop_table("refdata_imports")
    op.drop_table("postal_codes")
