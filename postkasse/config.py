"""Configuration: a TOML file with environment overrides ``POSTKASSE_<SECTION>__<KEY>``.

Precedence, highest first: environment, the TOML file, the defaults below. The defaults are the
embedded set-up (SQLite under ./var, the workers in a child process of serve, loopback ports) so one
command runs it all.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "POSTKASSE_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; the message says why in words an operator can act on."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/postkasse.db"

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return url


class BrokerSettings(_Section):
    url: str = Field("", description="redis://...; empty: `serve` runs the workers in a child process")
    namespace: str = "postkasse"
    worker_threads: int = Field(4, ge=1, le=64)


class SmtpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(2525, ge=0, le=65535)
    hostname: str = "postkasse.localhost"
    accept_addresses: list[str] = Field(default_factory=lambda: ["postkasse@localhost"])
    max_message_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_starttls: bool = False
    idle_timeout_seconds: float = Field(300.0, gt=0)
    session_timeout_seconds: float = Field(1800.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    max_sessions: int = Field(200, ge=1, description="SMTP sessions open at once; more are answered 421")
    max_sessions_per_client: int = Field(50, ge=1, description="SMTP sessions open at once from one address")
    max_errors: int = Field(20, ge=1, description="refused commands in a session before it is ended with 421")
    max_junk_commands: int = Field(
        100, ge=1, description="NOOP, RSET, VRFY, HELP and the like in a session before it is ended with 421"
    )

    @field_validator("accept_addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        if not addresses:
            raise ValueError("at least one mailbox address is needed")
        for address in addresses:
            local, at, domain = address.partition("@")
            if not (local and at and domain):
                raise ValueError(f"{address!r} is not an address of the form local@domain")
        return [a.lower() for a in addresses]

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.require_starttls and self.tls_cert is None:
            raise ValueError("require_starttls needs tls_cert and tls_key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return self


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8025, ge=0, le=65535)


class ServeSettings(_Section):
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="processes taking SMTP and HTTP on one port each (SO_REUSEPORT), each with the limits",
    )


class OidcSettings(_Section):
    """Log in through the organisation's OpenID Connect provider (authorization code flow)."""

    issuer: str = Field(..., description="the provider's issuer URL; its discovery document is read from it")
    client_id: str
    client_secret_env: str = Field(
        "POSTKASSE_OIDC_SECRET", description="the environment variable that holds the client secret"
    )
    scope: str = "openid profile"
    username_claim: str = Field("preferred_username", description="the claim that names the user")
    municipality_claim: str = Field(
        "municipality", description="the claim with the 4-digit municipality code"
    )
    role_claim: str = Field("role", description="the claim with the role: committee or ops")
    ops_role: str = Field("ops", description="the role claim's value that makes an operations user")
    button: str = Field("Log ind med organisationens login", description="the login page's button text")

    def client_secret(self) -> str:
        """Read when needed, so the secret is never part of the printed configuration."""
        return os.environ.get(self.client_secret_env, "")


class WebSettings(_Section):
    """The committees' web inbox on the HTTP port."""

    idle_timeout_minutes: float = Field(30.0, gt=0, description="a session unused this long ends")
    absolute_timeout_hours: float = Field(8.0, gt=0, description="a session ends this long after login")
    secure_cookies: Literal["auto", "always"] = Field(
        "auto", description="auto: Secure when the request came over https (or a proxy said so)"
    )
    max_failed_logins_per_account: int = Field(5, ge=1, description="within failed_login_window_minutes")
    max_failed_logins_per_address: int = Field(20, ge=1, description="within failed_login_window_minutes")
    failed_login_window_minutes: float = Field(15.0, gt=0)
    oidc: OidcSettings | None = None


class OutboxSettings(_Section):
    """How the database outbox re-sends work the broker may have lost."""

    redrive_interval_seconds: float = Field(30.0, gt=0)
    lease_seconds: float = Field(300.0, gt=0, description="how long a sent row waits before it is re-sent")


# The project's own list, found from the checkout; an installation elsewhere names its copy.
DEFAULT_MUNICIPALITIES = Path(__file__).resolve().parent.parent / "config" / "municipalities.toml"


class SenderKindSettings(_Section):
    """Envelope address patterns (`*`, `?`) per kind of sender, for the statistics; others are `other`."""

    gp: list[str] = Field(default_factory=list)
    child_psychiatry: list[str] = Field(default_factory=list)
    somatic_ward: list[str] = Field(default_factory=list)


class RoutingSettings(_Section):
    municipalities_file: Path = DEFAULT_MUNICIPALITIES
    min_age: int = Field(0, ge=0)
    max_age: int = Field(17, ge=0, le=24, description="the target group is 0-17 by default, at most 0-24")
    sender_kinds: SenderKindSettings = Field(default_factory=lambda: SenderKindSettings())

    @model_validator(mode="after")
    def _file_and_ages(self) -> RoutingSettings:
        if not self.municipalities_file.is_file():
            raise ValueError(f"municipalities file {self.municipalities_file} does not exist")
        if self.min_age > self.max_age:
            raise ValueError("min_age is above max_age")
        return self


# Connect, greeting, EHLO, STARTTLS and its handshake, EHLO, AUTH, MAIL, RCPT, DATA, the data, its reply,
# QUIT: each waits up to outbound.timeout_seconds, with room to spare.
RELAY_WAITS = 15


class OutboundSettings(_Section):
    """The relay receipts and committee messages go out through."""

    host: str = Field("", description="empty: no relay; outgoing mail is written to pickup_dir instead")
    port: int = Field(25, ge=1, le=65535)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    user: str = ""
    password: SecretStr = SecretStr("")
    from_address: str = "postkasse@localhost"
    ca_file: Path | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    pickup_dir: Path = Field(
        Path("var/outgoing"),
        description="with no relay (host empty), mail is written here as .eml files and counts as delivered",
    )
    claim_lease_seconds: float = Field(
        600.0, gt=0, description="how long a mail being sent is left to its sender before another takes it up"
    )

    @model_validator(mode="after")
    def _sane(self) -> OutboundSettings:
        if "@" not in self.from_address:
            raise ValueError("from_address must be an address")
        if self.claim_lease_seconds < RELAY_WAITS * self.timeout_seconds:
            raise ValueError(
                f"claim_lease_seconds must be at least {RELAY_WAITS} x timeout_seconds: a send waits on the"
                " relay up to that many times, and a live send that outlasted its claim could be sent twice"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} does not exist")
        if self.user and self.tls == "none":
            raise ValueError("a password is never sent without TLS: set tls to starttls or implicit")
        return self


class ReceiptSettings(_Section):
    max_per_sender_per_hour: int = Field(20, ge=1)


class DeadlineRulesSettings(_Section):
    """One set of deadline rules; see postkasse.deadlines.rules for how they are counted."""

    emptying_warning_hours: float = Field(20.0, gt=0)
    emptying_breach_hours: float = Field(24.0, gt=0)
    handling_days: int = Field(8, ge=1, le=60)
    handling_warning_days: int = Field(2, ge=0)
    working_days: bool = Field(False, description="count Danish working days instead of calendar days")
    startup_meeting_days: int = Field(28, ge=1, le=365, description="joint pathway: decision to start-up")
    follow_up_meeting_days: int = Field(42, ge=1, le=365, description="start-up meeting to first follow-up")
    meeting_warning_days: int = Field(7, ge=0, description="warn this many days before a meeting is due")

    @model_validator(mode="after")
    def _order(self) -> DeadlineRulesSettings:
        if self.emptying_warning_hours > self.emptying_breach_hours:
            raise ValueError("emptying_warning_hours is after emptying_breach_hours")
        if self.handling_warning_days >= self.handling_days:
            raise ValueError("handling_warning_days must be fewer than handling_days")
        if self.meeting_warning_days >= min(self.startup_meeting_days, self.follow_up_meeting_days):
            raise ValueError("meeting_warning_days must be fewer than the meeting deadlines' days")
        return self


class DeadlineSettings(DeadlineRulesSettings):
    """The default rules, each municipality's own (`[deadlines.municipality."0710"]`), and the alerts."""

    check_interval_seconds: float = Field(60.0, gt=0)
    operations_address: str = Field("", description="alerts go here as well as to the committee")
    municipality: dict[str, DeadlineRulesSettings] = Field(default_factory=dict)

    @field_validator("municipality")
    @classmethod
    def _codes(cls, rules: dict[str, DeadlineRulesSettings]) -> dict[str, DeadlineRulesSettings]:
        for code in rules:
            if not (len(code) == 4 and code.isdigit()):
                raise ValueError(f"{code!r} is not a four-digit municipality code")
        return rules

    @field_validator("operations_address")
    @classmethod
    def _address(cls, address: str) -> str:
        if address and "@" not in address:
            raise ValueError("must be an address")
        return address


class MedcomSettings(_Section):
    """Who the mailbox is in MedCom's network, and how strictly documents are checked."""

    ean: str = Field("5790000000000", description="our location number (EAN/GLN), the sender of our receipts")
    sor: str = Field("", description="our SOR id, the sender of our FHIR acknowledgements")
    name: str = "Den fælles digitale postkasse for børn og unge"
    receivers: list[str] = Field(
        default_factory=list,
        description="identifiers (EAN, SOR) letters may be addressed to; empty: any, or a kommunenummer",
    )
    schema_dir: Path | None = Field(
        None, description="MedCom's XSDs, <yyyy>/<mm>/<dd>/EMessage.xsd; none: no XSD"
    )
    max_document_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="a document's size; larger ones are refused unread"
    )
    max_depth: int = Field(64, ge=8, le=200, description="nesting of XML elements, JSON arrays and objects")
    max_nodes: int = Field(
        100_000, ge=1000, description="XML tags and attributes, JSON values: refused beyond, before parsing"
    )

    @field_validator("schema_dir")
    @classmethod
    def _directory(cls, directory: Path | None) -> Path | None:
        if directory is not None and not directory.is_dir():
            raise ValueError(f"schema directory {directory} does not exist")
        return directory


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ImapAccount(_Section):
    """One mailbox to empty (`[[imap]]`); its password is read from the environment variable it names."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="a short name of our choosing (a metric label, so never a person's name or address)",
    )
    host: str
    port: int = Field(993, ge=1, le=65535)
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    ca_file: Path | None = Field(None, description="PEM file of a private CA; default: the system's")
    user: str
    password_env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="e.g. POSTKASSE_IMAP_X_PASSWORD"
    )
    address: str = Field("", description="the mailbox's address, our envelope recipient; default: user")
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    failed_folder: str = "Failed"
    poll_interval_seconds: float = Field(60.0, gt=0, description="how often to look when there is no IDLE")
    idle_renew_seconds: float = Field(
        600.0, gt=0, le=1740, description="IDLE is ended and begun anew this often"
    )
    timeout_seconds: float = Field(60.0, gt=0, description="the longest wait for any answer from the server")
    max_backoff_seconds: float = Field(300.0, gt=0, description="the longest wait between reconnections")
    max_message_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="larger messages go to failed_folder"
    )
    lease_seconds: float = Field(
        180.0,
        gt=0,
        description="one daemon reads the account at a time; if it dies, another takes over after this long",
    )

    @model_validator(mode="after")
    def _sane(self) -> ImapAccount:
        if not self.address:
            self.address = self.user
        if "@" not in self.address:
            raise ValueError("address must be an address (user is not one, so give address)")
        self.address = self.address.lower()
        if self.tls == "none" and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                "a password is never sent without TLS: tls = none is only for a server on loopback"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} does not exist")
        if len({self.folder, self.processed_folder, self.failed_folder}) != 3:
            raise ValueError("folder, processed_folder and failed_folder must be three different folders")
        if not os.environ.get(self.password_env):
            raise ValueError(f"the environment variable {self.password_env} (password_env) is not set")
        if self.lease_seconds < 3 * self.timeout_seconds:
            raise ValueError(
                "lease_seconds must be at least 3 x timeout_seconds: the lease is renewed every lease_seconds"
                " / 3, and a batch of mail in hand must be stored well before the lease could run out"
            )
        return self

    def password(self) -> str:
        """Read when connecting, so the password is never part of the printed configuration."""
        return os.environ.get(self.password_env, "")


class LogSettings(_Section):
    level: str = "INFO"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable lines on a terminal, JSON otherwise (journald, files, collectors)"
    )
    json_format: bool | None = Field(
        None, alias="json", description="older spelling: true is json, false console"
    )

    def renders_json(self, terminal: bool) -> bool:
        if self.json_format is not None:
            return self.json_format
        return self.format == "json" or (self.format == "auto" and not terminal)

    @field_validator("level")
    @classmethod
    def _level(cls, level: str) -> str:
        level = level.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level


class RetentionSettings(_Section):
    """How long personal data is kept once its purpose has lapsed (GDPR art. 5(1)(e)); see README."""

    content_days: int = Field(30, ge=1, description="a referral's content, counted from when it was handled")
    unrouted_days: int = Field(30, ge=1, description="a message that never became a referral")
    outgoing_days: int = Field(14, ge=1, description="outgoing mail bodies and MedCom answers, once sent")
    audit_days: int = Field(1825, ge=365, description="audit rows: who read and changed what")
    dedup_days: int = Field(60, ge=1, description="IMAP and MedCom bookkeeping kept for duplicate detection")
    interval_hours: float = Field(24.0, gt=0, description="how often `serve` purges")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POSTKASSE_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    receipts: ReceiptSettings = Field(default_factory=ReceiptSettings)
    deadlines: DeadlineSettings = Field(default_factory=DeadlineSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    medcom: MedcomSettings = Field(default_factory=lambda: MedcomSettings())
    imap: list[ImapAccount] = Field(default_factory=list, description="mailboxes to empty, `[[imap]]` tables")
    log: LogSettings = Field(default_factory=LogSettings)

    @field_validator("imap")
    @classmethod
    def _distinct_accounts(cls, accounts: list[ImapAccount]) -> list[ImapAccount]:
        names = [account.name for account in accounts]
        if len(set(names)) != len(names):
            raise ValueError("two [[imap]] accounts have the same name")
        return accounts

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def masked(self) -> dict[str, Any]:
        """The effective configuration with passwords in URLs replaced, for printing."""
        data = self.model_dump(mode="json", by_alias=True)
        data["database"]["url"] = mask_url(self.database.url)
        data["broker"]["url"] = mask_url(self.broker.url)
        return data


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def load(path: str | Path | None = None) -> Settings:
    """Read the configuration from ``path`` (or $POSTKASSE_CONFIG) and the environment."""
    path = path or os.environ.get(CONFIG_ENV) or None
    toml_file: Path | None = None
    if path is not None:
        toml_file = Path(path)
        if not toml_file.is_file():
            raise ConfigError(f"configuration file {toml_file} does not exist")
        try:
            tomllib.loads(toml_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_file}: not valid TOML: {exc}") from None
    cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": toml_file}})
    try:
        settings: Settings = cls()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, toml_file)) from None
    return settings


def _describe(exc: ValidationError, toml_file: Path | None) -> str:
    where = f" in {toml_file} or the environment" if toml_file else " in the environment"
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        env = "POSTKASSE_" + "__".join(str(part).upper() for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {key} ({env}): {message}")
    return "\n".join(lines)
