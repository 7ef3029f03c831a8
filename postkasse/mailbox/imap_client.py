"""One IMAP session on aioimaplib, with a time limit on every wait for the server.

aioimaplib leaves a command waiting forever when the server closes the connection (after a BYE, say) or
goes silent, and has no STARTTLS. Every call here races the server's answer against the account's
timeout and the connection's loss, so a session either gets its answer or ends with `ImapError`; the
caller then drops the session and connects anew.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

from aioimaplib import aioimaplib  # type: ignore[import-untyped]

from postkasse.config import ImapAccount
from postkasse.tls import client_context

T = TypeVar("T")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_ALREADY_EXISTS = re.compile(rb"ALREADYEXISTS|already exists", re.IGNORECASE)


class ImapError(Exception):
    """The server refused a command, closed the connection or did not answer in time: the session is over."""


class ImapRefused(ImapError):
    """The server answered NO or BAD to one command; the connection itself may still be usable."""


def mailbox_name(name: str) -> str:
    """A folder name as IMAP wants it on the wire: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.append("&" + _b64(utf16).replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return aioimaplib.quoted("".join(out))  # type: ignore[no-any-return]


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii").rstrip("=")


def uid_set(uids: Iterable[int]) -> str:
    """UIDs as an IMAP sequence set with ranges: 1:3,7,9:10."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


class ImapSession:
    """A logged-in connection to one account's server, with the commands the channel needs."""

    def __init__(self, account: ImapAccount) -> None:
        self.account = account
        self.timeout = account.timeout_seconds
        self.lost = asyncio.Event()
        self.client: Any = None

    @property
    def protocol(self) -> Any:
        return self.client.protocol

    def has(self, capability: str) -> bool:
        return capability in self.protocol.capabilities

    async def open(self) -> None:
        """Connect, secure the connection as configured, log in and learn what the server can do."""
        account = self.account
        context = client_context(account.ca_file) if account.tls == "implicit" else None
        self.client = aioimaplib.IMAP4(
            host=account.host,
            port=account.port,
            timeout=self.timeout,
            conn_lost_cb=lambda _exc: self.lost.set(),
            ssl_context=context,
        )
        await self._call(self.client.wait_hello_from_server())
        if account.tls == "starttls":
            await self._starttls()
        response = await self._call(self.protocol.login(account.user, account.password()))
        if response.result != "OK":
            raise ImapError(f"login refused for {account.user}: {_text(response)}")
        # What a server offers before login (IDLE, say) need not hold after it: ask again.
        await self._call(self.protocol.capability())

    async def _starttls(self) -> None:
        if not self.has("STARTTLS"):
            raise ImapError("the server offers no STARTTLS, and tls = starttls forbids going on without it")
        command = aioimaplib.Command("STARTTLS", self.protocol.new_tag(), loop=self.protocol.loop)
        response = await self._call(self.protocol.execute(command))
        if response.result != "OK":
            raise ImapError(f"STARTTLS refused: {_text(response)}")
        if self.protocol.incomplete_line:
            raise ImapError("the server sent data after STARTTLS before the handshake; refusing it")
        loop = asyncio.get_running_loop()
        secure = await self._call(
            loop.start_tls(
                self.protocol.transport,
                self.protocol,
                client_context(self.account.ca_file),
                server_hostname=self.account.host,
            )
        )
        self.protocol.transport = secure
        await self._call(self.protocol.capability())  # RFC 3501 6.2.1: forget what was said in the clear

    async def select(self, folder: str) -> int:
        """Open `folder` for reading and writing; its UIDVALIDITY, which scopes every UID in it."""
        response = await self._call(self.protocol.select(mailbox_name(folder)))
        if response.result != "OK":
            raise ImapRefused(f"cannot open folder {folder!r}: {_text(response)}")
        for line in response.lines:
            match = _UIDVALIDITY.search(bytes(line))
            if match:
                return int(match.group(1))
        raise ImapError(f"the server gave no UIDVALIDITY for {folder!r}")

    async def ensure_folder(self, folder: str) -> None:
        response = await self._call(self.protocol.simple_command("CREATE", mailbox_name(folder)))
        if response.result != "OK" and not any(
            _ALREADY_EXISTS.search(bytes(line)) for line in response.lines
        ):
            raise ImapRefused(f"cannot create folder {folder!r}: {_text(response)}")

    async def uids(self) -> list[int]:
        """Every message in the selected folder not already marked for deletion, by UID, oldest first."""
        response = await self._call(self.protocol.search("UNDELETED", charset=None, by_uid=True))
        _ok(response, "UID SEARCH")
        found: list[int] = []
        for line in response.lines[
            :-1
        ]:  # aioimaplib keeps `* SEARCH 1 2 3` as b"1 2 3"; the last is the status
            numbers = bytes(line).split()
            if all(n.isdigit() for n in numbers):
                found.extend(int(n) for n in numbers)
        return sorted(found)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        response = await self._call(self.protocol.fetch(uid_set(uids), "(UID RFC822.SIZE)", by_uid=True))
        _ok(response, "UID FETCH RFC822.SIZE")
        sizes = {}
        for line in response.lines:
            text = bytes(line)
            uid, size = _UID.search(text), _SIZE.search(text)
            if uid and size:
                sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    async def bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The raw messages, unchanged and without setting \\Seen (BODY.PEEK[])."""
        response = await self._call(self.protocol.fetch(uid_set(uids), "(UID BODY.PEEK[])", by_uid=True))
        _ok(response, "UID FETCH BODY.PEEK[]")
        return _bodies(response.lines)

    async def move(self, uids: Sequence[int], folder: str) -> None:
        """MOVE where the server can; else COPY, flag \\Deleted and expunge (only these UIDs with UIDPLUS)."""
        target, which = mailbox_name(folder), uid_set(uids)
        if self.has("MOVE"):
            _ok(await self._call(self.protocol.move(which, target, by_uid=True)), f"UID MOVE to {folder!r}")
            return
        _ok(await self._call(self.protocol.copy(which, target, by_uid=True)), f"UID COPY to {folder!r}")
        _ok(
            await self._call(self.protocol.store(which, "+FLAGS.SILENT", r"(\Deleted)", by_uid=True)),
            "UID STORE \\Deleted",
        )
        if self.has("UIDPLUS"):
            _ok(await self._call(self.protocol.expunge(which, by_uid=True)), "UID EXPUNGE")
        else:
            _ok(await self._call(self.protocol.expunge()), "EXPUNGE")

    async def wait_for_mail(self, stop: asyncio.Event, within: float) -> None:
        """Return when new mail may have come, IDLE is due for renewal, `within` seconds have passed, or
        `stop` is set.

        With IDLE (RFC 2177) the server says when mail arrives; without it this is the poll interval."""
        if not self.has("IDLE"):
            timeout = min(self.account.poll_interval_seconds, within)
            await _first(stop.wait(), self.lost.wait(), timeout=timeout)
            if self.lost.is_set():
                raise ImapError("the server closed the connection")
            return
        await self._idle(stop, min(self.account.idle_renew_seconds, within))

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        protocol = self.protocol
        while not protocol.idle_queue.empty():
            protocol.idle_queue.get_nowait()
        idle = asyncio.ensure_future(protocol.idle())
        try:
            acknowledged = asyncio.ensure_future(protocol.wait_for_idle_response())
            await _first(idle, acknowledged, self.lost.wait(), timeout=self.timeout)
            began = acknowledged.done() and not idle.done()
            acknowledged.cancel()
            if self.lost.is_set():
                raise ImapError("the server closed the connection")
            if not began:
                raise ImapError("the server did not begin IDLE")
            renew_at = asyncio.get_running_loop().time() + seconds
            while not stop.is_set():
                remaining = renew_at - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                push = asyncio.ensure_future(protocol.idle_queue.get())
                await _first(push, stop.wait(), self.lost.wait(), timeout=remaining)
                if self.lost.is_set():
                    raise ImapError("the server closed the connection during IDLE")
                if not push.done():
                    push.cancel()
                    continue
                lines = [bytes(line) for line in push.result()]
                if any(line.startswith(b"BYE") for line in lines):
                    raise ImapError("the server said BYE during IDLE")
                if any(line.endswith((b"EXISTS", b"RECENT")) for line in lines):
                    break  # new mail; keepalives ("OK Still here") and flag changes are not
            protocol.idle_done()
            await self._call(idle)
        finally:
            if not idle.done():
                idle.cancel()

    async def logout(self) -> None:
        if self.client is not None and not self.lost.is_set():
            await self._call(self.protocol.logout())

    def close(self) -> None:
        """Drop the connection at once, whatever state it is in."""
        if self.client is None:
            return
        transport = self.protocol.transport
        if transport is not None:
            transport.close()
        for task in list(self.protocol.tasks) + list(self.client.tasks):
            task.cancel()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """The server's answer to one command; ImapError after the timeout or when the connection is lost."""
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if task in done:
            if task.cancelled():  # aioimaplib's own task, not ours: the session is in no state to go on
                raise ImapError("the command was cancelled")
            try:
                return task.result()
            except (TimeoutError, aioimaplib.AioImapException, OSError, ssl.SSLError) as exc:
                raise ImapError(f"{type(exc).__name__}: {exc}") from exc
        task.cancel()
        if lost in done:
            raise ImapError("the server closed the connection")
        raise ImapError(f"no answer from the server within {self.timeout:g} seconds")


async def _first(*awaitables: Awaitable[Any], timeout: float) -> None:
    """Wait until one of `awaitables` is done, or `timeout`; cancel the rest but the caller's own tasks."""
    futures = [asyncio.ensure_future(a) for a in awaitables]
    owned = [f for f, a in zip(futures, awaitables, strict=True) if f is not a]
    try:
        await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in owned:
            future.cancel()


def _ok(response: Any, what: str) -> None:
    if response.result != "OK":
        raise ImapRefused(f"{what} refused: {_text(response)}")


def _text(response: Any) -> str:
    lines = [bytes(line) for line in response.lines if isinstance(line, bytes | bytearray)]
    return b" ".join(lines[-1:]).decode("utf-8", "replace")[:200]


def _bodies(lines: Sequence[Any]) -> dict[int, bytes]:
    """Each message's bytes from a FETCH response: a `n FETCH (... {size}` line, the literal, then `)`.

    The UID may come before or after the literal, so it is read from the lines on either side."""
    found: dict[int, bytes] = {}
    uid: int | None = None
    body: bytes | None = None

    def keep() -> None:
        if uid is not None and body is not None:
            found[uid] = body

    for line in lines:
        if isinstance(line, bytearray):
            body = bytes(line)
            continue
        if _FETCH_START.match(line):
            keep()
            uid, body = None, None
        match = _UID.search(line)
        if match and uid is None:
            uid = int(match.group(1))
    keep()
    return found
