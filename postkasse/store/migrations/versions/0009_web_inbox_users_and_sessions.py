"""The web inbox: users, their sessions, failed logins, and who took a referral

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 15:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import postkasse.store.schema

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pulled_by", sa.Text(), nullable=True, comment="who took it: a user or a token name")
        )
    op.execute(
        "UPDATE referrals SET pulled_by = (SELECT e.actor FROM referral_events e "
        "WHERE e.referral_id = referrals.id AND e.action = 'pull' ORDER BY e.id DESC LIMIT 1) "
        "WHERE pulled_at IS NOT NULL"
    )
    op.create_table(
        "users",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column(
            "municipality",
            sa.String(4),
            nullable=True,
            comment="for committee users: the one queue they see",
        ),
        sa.Column(
            "password_hash", sa.Text(), nullable=True, comment="argon2id; null for users who log in by OIDC"
        ),
        sa.Column("subject", sa.Text(), nullable=True, comment="OIDC: issuer and subject"),
        sa.Column("created_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('committee', 'ops')", name=op.f("ck_users_role")),
        sa.CheckConstraint(
            "(role = 'committee') = (municipality IS NOT NULL)",
            name=op.f("ck_users_committee_has_municipality"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
        sa.UniqueConstraint("subject", name=op.f("uq_users_subject")),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, comment="SHA-256 of the cookie's secret"),
        sa.Column("user_id", ID, nullable=False),
        sa.Column(
            "csrf", sa.String(64), nullable=False, comment="the token every form of this session carries"
        ),
        sa.Column("started_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_web_sessions_token_hash")),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"], unique=False)
    op.create_table(
        "login_failures",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("at", postkasse.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    op.create_index(op.f("ix_login_failures_account_at"), "login_failures", ["account", "at"], unique=False)
    op.create_index(op.f("ix_login_failures_address_at"), "login_failures", ["address", "at"], unique=False)


def downgrade() -> None:
    op.drop_table("login_failures")
    op.drop_table("web_sessions")
    op.drop_table("users")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_column("pulled_by")
