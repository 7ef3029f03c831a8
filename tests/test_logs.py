"""Logs never carry a CPR number, whichever logger writes it and wherever in the event it sits."""

from __future__ import annotations

import json
import logging
import smtplib

import pytest
from sqlalchemy.exc import IntegrityError

from postkasse import errors, logs
from postkasse.receipts.relay import PermanentFailure


def read(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


@pytest.mark.parametrize(
    "cpr",
    ["0102031234", "010203-1234", "010203 1234", "010203 - 1234", "010203\u20131234", "010203\u00a01234"],
)
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


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("The value '010215 4123' is not accepted", "The value '[cpr]' is not accepted"),
        ("cpr=010215-4123; name", "cpr=[cpr]; name"),
        ("CPR: 010215  -  4123.", "CPR: [cpr]."),
        ("(0102154123)", "([cpr])"),
        ("order 12345678901234", "order 12345678901234"),  # a longer run of digits is not a CPR
        ("ean 5790000123456", "ean 5790000123456"),
        ("message 1234567 8901", "message 1234567 8901"),  # seven digits, then four
        ("at 2026-12-01 10:30", "at 2026-12-01 10:30"),
        ("phone +45 86 12 34 56", "phone +45 86 12 34 56"),
    ],
)
def test_every_written_form_of_a_cpr_number_and_nothing_else(text: str, masked: str) -> None:
    assert logs.CPR_SHAPE.sub(logs.CPR_MASK, text) == masked


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            IntegrityError(
                "INSERT ... VALUES (?)", ("Anna Hansen", "0102154123"), ValueError("duplicate key")
            ),
            "IntegrityError: the store refused the write (a constraint)",
        ),
        (ValueError("Navn: Anna Hansen"), f"ValueError: {errors.UNKNOWN}"),
        (
            UnicodeEncodeError("ascii", "læge Anna", 1, 2, "no"),
            "UnicodeEncodeError: a text could not be encoded or decoded",
        ),
        (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefusedError: Connection refused"),
        (
            smtplib.SMTPDataError(451, b"4.3.0 <anna@example> try later"),
            "SMTPDataError: the relay answered 451 4.3.0",
        ),
        (
            smtplib.SMTPRecipientsRefused({"anna@example": (450, b"mailbox busy")}),
            "SMTPRecipientsRefused: the relay refused the recipient (450)",
        ),
        (
            PermanentFailure("the relay refused the mail (554)"),
            "PermanentFailure: the relay refused the mail (554)",
        ),
    ],
)
def test_error_texts_name_the_type_and_quote_no_content(exc: BaseException, text: str) -> None:
    assert errors.describe(exc) == text


def test_smtp_command_logger_is_quiet_at_info() -> None:
    logs.setup("INFO")
    assert not logging.getLogger("mail.log").isEnabledFor(logging.INFO)
