"""A server certificate from a test CA, written where `smtp.tls_cert` and `smtp.tls_key` can name it."""

from __future__ import annotations

from pathlib import Path

import trustme


def write_server_cert(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    """The certificate chain and key for postkasse.localhost and 127.0.0.1, as two PEM files."""
    cert = ca.issue_cert("postkasse.localhost", "127.0.0.1")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path
