"""The database schema (SQLAlchemy Core). Alembic migrations in ./migrations must produce exactly this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite's INTEGER PRIMARY KEY is its rowid; PostgreSQL gets a bigint identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False, comment="smtp | imap | http"),
    Column("mail_from", Text, nullable=False, comment="envelope sender; empty for the null sender"),
    Column("rcpt_tos", JSON, nullable=False, comment="envelope recipients"),
    Column("peer", String(64), nullable=False, comment="client address and port"),
    Column("tls", Boolean, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("message_id", Text, nullable=True, comment="the Message-ID header, if any"),
    Column("raw", LargeBinary, nullable=False, comment="the bytes exactly as received"),
    Column("purged_at", UTCDateTime, nullable=True, comment="content removed (retention or erasure)"),
    Index(None, "message_id"),
    Index(None, "received_at"),
    Index(None, "sha256"),  # an IMAP message stored before a crash is recognised by its bytes
    Index(None, "purged_at", "received_at"),
)

# Where each message taken from an IMAP folder was, so one left there by a crash is moved, not stored again.
imap_messages = Table(
    "imap_messages",
    metadata,
    Column("account", String(64), primary_key=True, comment="the [[imap]] account's configured name"),
    Column("folder", Text, primary_key=True),
    Column("uidvalidity", BigInteger, primary_key=True),
    Column("uid", BigInteger, primary_key=True),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
)

# One daemon reads an IMAP account at a time; the others stand by until its lease runs out.
imap_leases = Table(
    "imap_leases",
    metadata,
    Column("account", String(64), primary_key=True, comment="the [[imap]] account's configured name"),
    Column("holder", Text, nullable=False, comment="host:pid:token of the daemon that reads the account"),
    Column("taken_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

OUTBOX_STATES = ("pending", "done", "failed")

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False, comment="the pipeline step to run"),
    Column("target_id", Id, nullable=False, comment="what the step works on, by the step's kind"),
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=False, comment="when the redriver may send it again"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    CheckConstraint("state IN ('pending', 'done', 'failed')", name="state"),
    Index(None, "state", "next_attempt_at"),
    Index(None, "kind", "target_id"),
)

message_headers = Table(
    "message_headers",
    metadata,
    Column("message_id", Id, ForeignKey("messages.id"), primary_key=True),
    Column("from_header", Text, nullable=True),
    Column("subject", Text, nullable=True),
    Column("date_header", Text, nullable=True),
    Column("content_type", Text, nullable=True),
    Column("defects", Integer, nullable=False, comment="parser defects found in the headers"),
    Column("parsed_at", UTCDateTime, nullable=False),
)

# Reference data. Each kind is replaced whole by its importer, in one transaction.
refdata_imports = Table(
    "refdata_imports",
    metadata,
    Column("kind", String(16), primary_key=True, comment="postnord | roads | registry"),
    Column("imported_at", UTCDateTime, nullable=False),
    Column("source", Text, nullable=False, comment="the file name imported"),
    Column("sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
)

postal_codes = Table(
    "postal_codes",
    metadata,
    Column("postal_code", String(4), primary_key=True),
    Column("municipality", String(4), primary_key=True),
    Column("city", Text, nullable=False),
)

road_segments = Table(
    "road_segments",
    metadata,
    Column("municipality", String(4), primary_key=True),
    Column("road_code", String(4), primary_key=True),
    Column("postal_code", String(4), primary_key=True),
    Column("road_name", Text, nullable=False),
    Column("road_key", Text, nullable=False, comment="normalised road name for lookups"),
    Index(None, "postal_code", "road_key"),
)

registry_persons = Table(
    "registry_persons",
    metadata,
    Column("cpr", String(10), primary_key=True),
    Column("municipality", String(4), nullable=False),
    Column("road_name", Text, nullable=True),
    Column("house_number", String(8), nullable=True),
    Column("postal_code", String(4), nullable=True),
)

REFERRAL_STATES = ("triage", "new", "pulled", "handled")
OUTCOMES = ("forwarded", "returned", "joint_pathway", "closed")

referrals = Table(
    "referrals",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False),
    Column(
        "letter_id", String(64), nullable=False, server_default="", comment="MedCom letter; empty for mail"
    ),
    Column("municipality", String(4), nullable=True, comment="null while in triage"),
    Column("state", String(16), nullable=False),
    Column("triage_reason", String(32), nullable=True, comment="stable code, while or since in triage"),
    Column("reasons", JSON, nullable=False, comment="routing reason codes"),
    Column("explanation", JSON, nullable=False, comment="routing explanation, sentence by sentence"),
    Column("flags", JSON, nullable=False),
    Column("cpr", String(10), nullable=True),
    Column("patient_name", Text, nullable=True),
    Column("subject", Text, nullable=True),
    Column("urgent", Boolean, nullable=False),
    Column("unread_reply", Boolean, nullable=False, server_default=false()),
    Column("outcome", String(16), nullable=True),
    Column("outcome_detail", Text, nullable=True, comment="the unit forwarded to, or the reason returned"),
    Column("return_reason", String(32), nullable=True, comment="returned: the reason's code, for statistics"),
    Column("sender_kind", String(24), nullable=False, server_default="other", comment="gp, hospital unit..."),
    Column("received_at", UTCDateTime, nullable=False, comment="when the mailbox accepted the message"),
    Column("queued_at", UTCDateTime, nullable=True, comment="when it entered its municipality's queue"),
    Column("warn_at", UTCDateTime, nullable=False, comment="handling deadline: the warning"),
    Column("due_at", UTCDateTime, nullable=False, comment="handling deadline, fixed when routed or assigned"),
    Column("pulled_at", UTCDateTime, nullable=True),
    Column("pulled_by", Text, nullable=True, comment="who took it: a user or a token name"),
    Column("handled_at", UTCDateTime, nullable=True),
    Column("exception", String(24), nullable=True, comment="authority_case | medical_reason: clock stopped"),
    Column("unit", String(64), nullable=True, comment="forwarded: the unit's id in municipalities.toml"),
    Column("forward_mail_id", Id, nullable=True, comment="forwarded: the mail to the unit (outgoing_mail)"),
    Column("forwarded_at", UTCDateTime, nullable=True),
    Column("transferred_from", String(4), nullable=True, comment="the municipality it was last moved from"),
    Column("transferred_at", UTCDateTime, nullable=True),
    Column("purged_at", UTCDateTime, nullable=True, comment="content removed (retention or erasure)"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("state IN ('triage', 'new', 'pulled', 'handled')", name="state"),
    CheckConstraint(
        "outcome IS NULL OR outcome IN ('forwarded', 'returned', 'joint_pathway', 'closed')", name="outcome"
    ),
    CheckConstraint("state = 'triage' OR municipality IS NOT NULL", name="routed_has_municipality"),
    CheckConstraint(
        "exception IS NULL OR exception IN ('authority_case', 'medical_reason')", name="exception"
    ),
    UniqueConstraint("message_id", "letter_id"),
    Index(None, "municipality", "state", "id"),
    Index(None, "municipality", "state", "urgent", "due_at", "id"),
    Index(None, "unit"),
    Index(None, "municipality", "state", "queued_at"),
    Index(None, "municipality", "state", "handled_at"),
    Index(None, "state", "id"),
    Index(None, "state", "queued_at"),
    Index(None, "state", "warn_at"),
    Index(None, "received_at"),
)

referral_events = Table(
    "referral_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False, comment="who: system, an operator or a committee token name"),
    Column("action", String(32), nullable=False),
    Column("from_state", String(16), nullable=True),
    Column("to_state", String(16), nullable=True),
    Column("detail", JSON, nullable=False),
    Index(None, "referral_id", "id"),
)


deadline_alerts = Table(
    "deadline_alerts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=False),
    Column(
        "deadline",
        String(24),
        nullable=False,
        comment="emptying | handling | urgent | startup_meeting | follow_up_meeting",
    ),
    Column("level", String(16), nullable=False, comment="warning | breach; urgent | triage for urgent"),
    Column("municipality", String(4), nullable=False, comment="the queue alerted; empty: operations only"),
    Column("due_at", UTCDateTime, nullable=True),
    Column("raised_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime, nullable=True, comment="set when the condition cleared"),
    Column(
        "cycle",
        Integer,
        nullable=False,
        server_default="0",
        comment="which round of a repeating deadline: a pathway's n-th meeting; 0 for the others",
    ),
    UniqueConstraint("referral_id", "deadline", "cycle", "level", "municipality"),
    Index(None, "resolved_at"),
)

# A referral moved to another municipality: the child moved, or it belonged elsewhere.
transfers = Table(
    "transfers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=False),
    Column("from_municipality", String(4), nullable=False),
    Column("to_municipality", String(4), nullable=False),
    Column("reason", String(32), nullable=False, comment="moved | wrong_municipality"),
    Column("note", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "referral_id", "id"),
    Index(None, "at"),
)

# A joint pathway ("fælles forpligtende forløb"): its meetings, each with the action plan as it stood after
# it, and the meeting deadline that runs now (one at a time: the start-up meeting, then each follow-up).
pathways = Table(
    "pathways",
    metadata,
    Column("referral_id", Id, ForeignKey("referrals.id"), primary_key=True),
    Column("municipality", String(4), nullable=False),
    Column("state", String(16), nullable=False),
    Column("responsible", JSON, nullable=False, comment="indsatsansvarlig: name, title, telephone"),
    Column("started_at", UTCDateTime, nullable=False, comment="when the committee decided the pathway"),
    Column("closed_at", UTCDateTime, nullable=True),
    Column("meetings_held", Integer, nullable=False, server_default="0"),
    Column(
        "deadline", String(24), nullable=True, comment="startup_meeting | follow_up_meeting; null: none runs"
    ),
    Column("warn_at", UTCDateTime, nullable=True),
    Column("due_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("state IN ('active', 'closed')", name="state"),
    Index(None, "state", "warn_at"),
)

meetings = Table(
    "meetings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("referral_id", Id, ForeignKey("pathways.referral_id"), nullable=False),
    Column("kind", String(16), nullable=False, comment="opstart | opfoelgning | afslutning"),
    Column("held_at", UTCDateTime, nullable=False),
    Column("place", Text, nullable=False),
    Column("participants", JSON, nullable=False),
    Column("responsible", JSON, nullable=False, comment="the responsible professional named in this plan"),
    Column("plan", JSON, nullable=False, comment="the action plan as it stood after the meeting"),
    Column("due_at", UTCDateTime, nullable=True, comment="the meeting deadline that ran when it was held"),
    Column("recorded_by", Text, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    CheckConstraint("kind IN ('opstart', 'opfoelgning', 'afslutning')", name="kind"),
    Index(None, "referral_id", "id"),
)

pathway_explanations = Table(
    "pathway_explanations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("referral_id", Id, ForeignKey("pathways.referral_id"), nullable=False),
    Column("deadline", String(24), nullable=False),
    Column("due_at", UTCDateTime, nullable=True, comment="the due time explained"),
    Column("text", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "referral_id", "id"),
)

periodic_runs = Table(
    "periodic_runs",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("finished_at", UTCDateTime, nullable=False, comment="the last run that completed"),
)

# MedCom: every letter seen, the first sighting of each (sender, letter id), and every answer written.
medcom_letters = Table(
    "medcom_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False),
    Column("sender", String(64), nullable=False, comment="whose identifiers these are: EAN, SOR or channel"),
    Column("envelope_id", String(64), nullable=False, comment="Envelope/Identifier or Bundle.id"),
    Column("letter_id", String(64), nullable=False, comment="Letter/Identifier or MessageHeader.id"),
    Column("kind", String(32), nullable=False),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=True),
    Column("duplicate_of", Id, ForeignKey("medcom_letters.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column(
        "thread", String(128), nullable=True, comment="FHIR Communication.identifier, kept across replies"
    ),
    UniqueConstraint("message_id", "letter_id"),
    Index(None, "sender", "envelope_id"),
    Index(None, "thread"),
)

medcom_first_letters = Table(
    "medcom_first_letters",
    metadata,
    Column("sender", String(64), primary_key=True),
    Column("letter_id", String(64), primary_key=True),
    Column("first", Id, ForeignKey("medcom_letters.id"), nullable=False),
)

medcom_answers = Table(
    "medcom_answers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=True, comment="the message answered"),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=True),
    Column("kind", String(32), nullable=False, comment="XCTL02 | XCTL03 | Acknowledgement | XDIS91 | ..."),
    Column("code", String(32), nullable=False, comment="ok, or the refusal code"),
    Column("content_type", String(64), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("recipient", Text, nullable=False, comment="mail address, or api:TOKEN for the sender to pull"),
    Column("outgoing_id", Id, ForeignKey("outgoing_mail.id"), nullable=True, comment="when sent by mail"),
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "message_id"),
    Index(None, "recipient", "id"),
)

TOKEN_SCOPES = ("committee", "ops", "sender")

tokens = Table(
    "tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("scope", String(16), nullable=False),
    Column("municipality", String(4), nullable=True, comment="for committee tokens: the one queue it sees"),
    Column("secret_hash", Text, nullable=False, comment="argon2id hash; the token itself is never stored"),
    Column("rights", JSON, nullable=False, server_default="[]", comment="extra rights: subject_access"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    CheckConstraint("scope IN ('committee', 'ops', 'sender')", name="scope"),
    CheckConstraint("(scope = 'committee') = (municipality IS NOT NULL)", name="committee_has_municipality"),
)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("municipality", String(4), nullable=True, comment="for committee users: the one queue they see"),
    Column("password_hash", Text, nullable=True, comment="argon2id; null for users who log in by OIDC"),
    Column("subject", Text, nullable=True, unique=True, comment="OIDC: issuer and subject"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime, nullable=True),
    CheckConstraint("role IN ('committee', 'ops')", name="role"),
    CheckConstraint("(role = 'committee') = (municipality IS NOT NULL)", name="committee_has_municipality"),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True, comment="SHA-256 of the cookie's secret"),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("csrf", String(64), nullable=False, comment="the token every form of this session carries"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Index(None, "user_id"),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("account", String(64), nullable=False),
    Column("address", String(64), nullable=False),
    Index(None, "account", "at"),
    Index(None, "address", "at"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False, comment="token name, or ops:NAME from the shell"),
    Column("action", String(32), nullable=False),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=True),
    Column("detail", JSON, nullable=False),
    Index(None, "referral_id", "id"),
    Index(None, "at"),
)

OUTGOING_STATES = ("pending", "sending", "sent", "failed", "suppressed")

outgoing_mail = Table(
    "outgoing_mail",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(24), nullable=False, comment="receipt | committee_message"),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=True),
    Column("answers_message", Id, ForeignKey("messages.id"), nullable=True, comment="the message answered"),
    Column("recipient", Text, nullable=False),
    Column("message_id_header", Text, nullable=False, unique=True, comment="our Message-ID"),
    Column("raw", LargeBinary, nullable=True, comment="the mail as sent; empty when suppressed"),
    Column("state", String(16), nullable=False),
    Column("suppressed_reason", String(32), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claimed_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    CheckConstraint("state IN ('pending', 'sending', 'sent', 'failed', 'suppressed')", name="state"),
    Index(None, "recipient", "kind", "created_at"),
    Index(None, "state"),
    Index(None, "answers_message"),
)

thread = Table(
    "thread",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("referral_id", Id, ForeignKey("referrals.id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("direction", String(16), nullable=False, comment="to_sender | from_sender"),
    Column("author", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=True, comment="the sender's mail"),
    Column("outgoing_id", Id, ForeignKey("outgoing_mail.id"), nullable=True, comment="our mail"),
    CheckConstraint("direction IN ('to_sender', 'from_sender')", name="direction"),
    Index(None, "referral_id", "id"),
)
