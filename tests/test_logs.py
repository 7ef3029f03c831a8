"""Logs never carry a CPR number, whichever logger writes it and wherever in the event it sits."""

from __future__ import annotations

import json
import logging

import pytest

from postkasse import logs


def read(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


@pytest.mark.parametrize("cpr", ["0102031234", "010203-1234"])
def test_structlog_fields_are_masked(capsys: pytest.CaptureFixture[str], cpr: str) -> None:
    logs.setup("INFO", json=True)  # after capsys has taken stderr
    logs.get("test").info(
        f"subject Henvisning {cpr}", cpr=cpr, nested={"a": [cpr, 1]}, number=int("1203051234")
    )
    (event,) = read(capsys)
    text = json.dumps(event)
    assert cpr not in text and "1203051234" not in text
    assert event["cpr"] == logs.CPR_MASK
    assert event["nested"] == {"a": [logs.CPR_MASK, 1]}
    assert event["event"] == f"subject Henvisning {logs.CPR_MASK}"


def test_standard_library_loggers_and_tracebacks_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", json=True)  # after capsys has taken stderr
    try:
        raise ValueError("bad person 0102031234")
    except ValueError:
        logging.getLogger("somelib").exception("failed for %s", "010203-1234")
    (event,) = read(capsys)
    text = json.dumps(event)
    assert "0102031234" not in text and "010203-1234" not in text
    assert "ValueError" in text


def test_other_numbers_are_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", json=True)  # after capsys has taken stderr
    logs.get("test").info("counts", message=12345, phone="+45 86 12 34 56", ean="5790000123456")
    (event,) = read(capsys)
    assert event["message"] == 12345
    assert event["phone"] == "+45 86 12 34 56"
    assert event["ean"] == "5790000123456"


def test_smtp_command_logger_is_quiet_at_info() -> None:
    logs.setup("INFO")
    assert not logging.getLogger("mail.log").isEnabledFor(logging.INFO)
