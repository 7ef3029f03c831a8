"""Structured logs (structlog, JSON) that never carry a CPR number.

Every event, including those of aiosmtpd, uvicorn and dramatiq through the standard library, passes
`mask_cpr`, which replaces anything shaped like a CPR number in every field, nested values and formatted
tracebacks included: six digits and four, as people write them (`DDMMYY-SSSS`, `DDMMYY SSSS`,
`DDMMYYSSSS`, `DDMMYY - SSSS`, any dash), but not ten digits inside a longer run of digits.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

CPR_SHAPE = re.compile(
    r"(?<!\d)\d{6}(?:[ \t\u00a0]*[-\u2010-\u2015\u2212][ \t\u00a0]*|[ \t\u00a0])?\d{4}(?!\d)"
)
CPR_MASK = "[cpr]"

# Loggers that write every SMTP command (and at DEBUG message content), or chatter at INFO.
_QUIET = {
    "mail.log": logging.WARNING,
    "dramatiq": logging.INFO,
    "uvicorn.access": logging.WARNING,
    "alembic.runtime.plugins": logging.WARNING,
    "aioimaplib": logging.WARNING,  # logs what it receives at DEBUG, message bodies included
}


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return CPR_SHAPE.sub(CPR_MASK, value)
    if isinstance(value, bytes):
        return _mask(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {_mask(k): _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and 10**9 <= abs(value) < 10**10:
        return CPR_MASK
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return _mask(repr(value))


def mask_cpr(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask CPR-shaped text in every field."""
    return {key: _mask(value) for key, value in event_dict.items()}


def setup(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library through the same masking, JSON-rendering chain."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_cpr,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(floor, logging.getLevelName(level)))


def get(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
