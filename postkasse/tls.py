"""TLS for the servers postkasse connects to (the outbound relay, IMAP): verified, TLS 1.2 or later."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, or only those in `ca_file` (a private CA), with host names checked."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
