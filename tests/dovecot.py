"""A throwaway Dovecot for the IMAP tests: its own configuration, port, users and Maildirs, not the system's.

Dovecot comes from the Debian package `dovecot-imapd` (deploy/dev/ensure-services.sh installs it without
starting its service). Each `Dovecot` runs `dovecot -F -c <conf>` as a child process on a free loopback port
with implicit TLS from a trustme certificate; mail is delivered as user `nobody`, so the tests can take
permissions away from a folder and make the server refuse to move mail into it.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import trustme

from tests.servers import free_port, wait_until

MAIL_UID = 65534  # nobody: mail processes never run as root, so permissions on a folder count
PASSWORD = "hemmelig-test"
# What Dovecot says after login, less IDLE and MOVE: a server that must be polled and copied from.
PLAIN_CAPABILITY = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT THREAD=REFERENCES LITERAL+ UIDPLUS NAMESPACE"
)


def dovecot_binary() -> str:
    binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").is_file() else None)
    if binary is None:
        raise AssertionError(
            "dovecot is not installed: the IMAP tests need Debian's dovecot-imapd "
            "(`make test` installs it through deploy/dev/ensure-services.sh; by hand: "
            "apt-get install --no-install-recommends dovecot-imapd)"
        )
    return binary


class Dovecot:
    """One Dovecot server for a test; `stop` and `start` again keep its port, users and mail."""

    def __init__(self, workdir: Path, users: Iterable[str] = ("favrskov",), capability: str | None = None):
        self.workdir = workdir
        self.users = tuple(users)
        self.port = free_port()  # implicit TLS
        self.starttls_port = free_port()  # plain until STARTTLS, which Dovecot requires before login
        # Unix sockets live under base_dir, whose path must stay short; pytest's tmp_path may not be.
        # The passwd file and the mail must be reachable by Dovecot's unprivileged processes too.
        self.base_dir = Path(tempfile.mkdtemp(prefix="pk-dovecot-"))
        self.base_dir.chmod(0o755)
        self.mail = self.base_dir / "mail"
        self.log_path = workdir / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca = trustme.CA()
        self.ca_file = workdir / "imap-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert, key = workdir / "imap-cert.pem", workdir / "imap-key.pem"
        server_cert.private_key_pem.write_to_path(str(key))
        with cert.open("wb") as out:
            for blob in server_cert.cert_chain_pems:
                out.write(blob.bytes())
        passwd = self.base_dir / "passwd"
        passwd.write_text(
            "".join(
                f"{user}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_UID}::{self.mail / user}::\n"
                for user in self.users
            )
        )
        self.mail.mkdir(exist_ok=True)
        os.chown(self.mail, MAIL_UID, MAIL_UID)
        self.config = workdir / "dovecot.conf"
        self.config.write_text(
            f"""
base_dir = {self.base_dir}
state_dir = {self.base_dir}/state
log_path = {self.log_path}
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = </usr/share/dovecot/dh.pem
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
first_valid_uid = {MAIL_UID}
mail_location = maildir:~/Maildir
mail_fsync = never
imap_idle_notify_interval = 2 mins
{"imap_capability = " + capability if capability else ""}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.starttls_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
        )

    def start(self) -> None:
        (self.base_dir / "state").mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [dovecot_binary(), "-F", "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._ready, 30, f"dovecot on port {self.port}; log:\n{self.log()}")

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"dovecot exited:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server as an administrator would: its clients get BYE and are disconnected."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        wait_until(lambda: not self._listening(), 10, "dovecot to stop listening")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def maildir(self, user: str, folder: str) -> Path:
        root = self.mail / user / "Maildir"
        return root if folder == "INBOX" else root / f".{folder}"

    def freeze(self, frozen: bool = True) -> None:
        """Make the server go silent (SIGSTOP to it and every process it started), or wake it again:
        connections stay open, nothing is answered, as with a hung server or a dropped network path."""
        assert self.proc is not None
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def refuse_mail_in(self, user: str, folder: str, refuse: bool = True) -> None:
        """Make the server unable to put mail into `folder` (MOVE and COPY fail), or able again."""
        root = self.maildir(user, folder)
        for path in (root, root / "tmp", root / "new", root / "cur"):
            path.chmod(0o500 if refuse else 0o700)

    @contextmanager
    def client(self, user: str = "favrskov") -> Iterator[Mailbox]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=context, timeout=30)
        imap.login(user, PASSWORD)
        try:
            yield Mailbox(imap)
        finally:
            with suppress(imaplib.IMAP4.error, OSError):
                imap.logout()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Mailbox:
    """What the tests do to a mailbox: put mail in, and see what is in each folder."""

    def __init__(self, imap: imaplib.IMAP4) -> None:
        self.imap = imap

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        status, detail = self.imap.append(folder, "", None, raw)
        assert status == "OK", detail

    def create(self, folder: str) -> None:
        self.imap.create(folder)

    def messages(self, folder: str) -> list[bytes]:
        """The raw messages in `folder` (none if it does not exist), by UID."""
        status, _ = self.imap.select(folder, readonly=True)
        if status != "OK":
            return []
        status, data = self.imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert status == "OK", data
        return [part[1] for part in data if isinstance(part, tuple)]

    def count(self, folder: str) -> int:
        status, data = self.imap.status(folder, "(MESSAGES)")
        if status != "OK":
            return 0
        text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        return int(text.rsplit("MESSAGES", 1)[1].strip(" )"))
