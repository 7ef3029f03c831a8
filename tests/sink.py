"""A real SMTP server as the outbound relay in tests: aiosmtpd on a free loopback port, keeping its mail."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.servers import free_port


@dataclass(frozen=True)
class Delivered:
    envelope_sender: str
    recipients: tuple[str, ...]
    raw: bytes

    @property
    def mail(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class Sink:
    """`delay`: a slow relay, taking that many seconds over each message before it answers DATA. Like a relay
    that takes a message on only as it answers 250, it keeps nothing from a client that left meanwhile
    (aiosmtpd cancels the handler when the connection is lost); `holding` counts the messages in hand."""

    def __init__(self, port: int | None = None, delay: float = 0.0, **smtp: Any) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.holding = 0
        self.received: list[Delivered] = []
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **smtp)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            with self.lock:
                self.holding += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                with self.lock:
                    self.holding -= 1
        with self.lock:
            sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
            self.received.append(Delivered(sender, tuple(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def start(self) -> Sink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def mails(self) -> list[Delivered]:
        with self.lock:
            return list(self.received)
