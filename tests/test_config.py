"""Configuration: TOML file, environment overrides, defaults, and errors an operator can act on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from postkasse import cli
from postkasse.config import DEFAULT_MUNICIPALITIES, ConfigError, load

EXAMPLE = Path(__file__).parent.parent / "config" / "postkasse.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("POSTKASSE_"):
            monkeypatch.delenv(key)


def test_defaults_are_the_embedded_setup() -> None:
    settings = load()
    assert settings.database.url == "sqlite:///var/postkasse.db"
    assert settings.broker.url == ""
    assert (settings.smtp.host, settings.smtp.port) == ("127.0.0.1", 2525)
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8025)
    assert settings.smtp.max_message_bytes == 25 * 1024 * 1024


def test_documented_example_is_valid_and_matches_the_defaults() -> None:
    assert load(EXAMPLE).model_dump() == load().model_dump()


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pk.toml"
    path.write_text('[smtp]\nport = 2600\naccept_addresses = ["Postkasse@Favrskov.dk"]\n')
    monkeypatch.setenv("POSTKASSE_SMTP__PORT", "2700")
    monkeypatch.setenv("POSTKASSE_DATABASE__URL", "postgresql+psycopg://pk:hemmelig@db/pk")
    settings = load(path)
    assert settings.smtp.port == 2700
    assert settings.smtp.accept_addresses == ["postkasse@favrskov.dk"]
    assert settings.database.url == "postgresql+psycopg://pk:hemmelig@db/pk"


def test_config_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pk.toml"
    path.write_text("[http]\nport = 9000\n")
    monkeypatch.setenv("POSTKASSE_CONFIG", str(path))
    assert load().http.port == 9000


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[smtp]\nport = 'abc'\n", "smtp.port (POSTKASSE_SMTP__PORT)"),
        ("[smtp]\nprot = 25\n", "smtp.prot"),
        ("[smtp]\nrequire_starttls = true\n", "require_starttls needs tls_cert and tls_key"),
        ("[smtp]\ntls_cert = '/nonexistent.pem'\ntls_key = '/nonexistent.key'\n", "does not exist"),
        ("[smtp]\naccept_addresses = []\n", "at least one mailbox address"),
        ("[smtp]\naccept_addresses = ['postkasse']\n", "not an address"),
        ("[database]\nurl = 'mysql://x'\n", "sqlite:/// or postgresql+psycopg://"),
        ("[smtp\nport = 1\n", "not valid TOML"),
        ("[outbound]\ntimeout_seconds = 60\n", "claim_lease_seconds must be at least 15 x timeout_seconds"),
    ],
)
def test_errors_name_the_key_and_the_reason(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "pk.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_check_config_prints_the_effective_config_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POSTKASSE_DATABASE__URL", "postgresql+psycopg://pk:hemmelig@db:5432/pk")
    monkeypatch.setenv("POSTKASSE_BROKER__URL", "redis://:redispass@cache:6379/0")
    assert cli.main(["check-config"]) == 0
    printed = capsys.readouterr().out
    assert "hemmelig" not in printed and "redispass" not in printed
    shown = json.loads(printed)
    assert shown["database"]["url"] == "postgresql+psycopg://pk:***@db:5432/pk"
    assert shown["broker"]["url"] == "redis://:***@cache:6379/0"


def test_check_config_fails_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pk.toml"
    path.write_text("[smtp]\nport = 70000\n")
    assert cli.main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "smtp.port" in err and "less than or equal to 65535" in err


@pytest.mark.parametrize(
    ("unit", "complaint"),
    [
        ('id = "PPR X"\nname = "PPR"', "is not lower-case"),
        ('id = "ppr"\nname = ""', "needs a name"),
        ('id = "ppr"\nname = "PPR"\naddress = "ppr at favrskov"', "is not a mail address"),
        ('id = "ppr"\nname = "PPR"\n\n[[municipality.unit]]\nid = "ppr"\nname = "PPR 2"', "listed twice"),
    ],
)
def test_check_config_refuses_a_unit_it_could_not_forward_to(
    tmp_path: Path, unit: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DEFAULT_MUNICIPALITIES.read_text(encoding="utf-8").replace(
        'code = "0710"\nname = "Favrskov Kommune"\nregion = 1082\n',
        f'code = "0710"\nname = "Favrskov Kommune"\nregion = 1082\n\n[[municipality.unit]]\n{unit}\n',
    )
    municipalities = tmp_path / "municipalities.toml"
    municipalities.write_text(text, encoding="utf-8")
    config = tmp_path / "postkasse.toml"
    config.write_text(f'[routing]\nmunicipalities_file = "{municipalities}"\n', encoding="utf-8")
    assert cli.main(["--config", str(config), "check-config"]) == 2
    assert complaint in capsys.readouterr().err
