"""A real OpenID Connect provider for the login tests: tests/oidc/provider.js (npm's oidc-provider, pinned by
tests/oidc/package-lock.json) as its own Node process on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, wait_until

HERE = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "postkasse-test"
CLIENT_SECRET = "test-only-client-secret"  # the test provider's alone; no real provider ever sees it
# The provider's test accounts and their claims (`sub` and `preferred_username` are the account's name).
ACCOUNTS: dict[str, dict[str, str]] = {
    "anna": {"municipality": "0710"},
    "nomun": {},
    "drift": {"role": "ops"},
}


@dataclass(frozen=True)
class Provider:
    issuer: str
    client_id: str
    client_secret: str
    app_port: int  # the one port the provider will send users back to: postkasse must listen there

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/login/oidc/callback"


def _installed() -> None:
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are missing; `make services` installs them"
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, timeout=300, capture_output=True, text=True
        )
        assert done.returncode == 0, f"npm ci in {HERE} failed:\n{done.stdout}\n{done.stderr}"


def _discovery(issuer: str) -> bool:
    try:
        url = f"{issuer}/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (our own provider on loopback)
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module", name="oidc_provider")
def provider_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    """The provider, running until the module's tests are done."""
    _installed()
    port, app_port = free_port(), free_port()
    provider = Provider(f"http://127.0.0.1:{port}", CLIENT_ID, CLIENT_SECRET, app_port)
    env = {
        **os.environ,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URI": provider.redirect_uri,
        "OIDC_ACCOUNTS": json.dumps(ACCOUNTS),
    }
    log_path = tmp_path_factory.mktemp("oidc") / "provider.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["node", "provider.js", str(port)], cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the OIDC provider exited:\n{log_path.read_text(errors='replace')}")
            return _discovery(provider.issuer)

        wait_until(ready, 30, "the OIDC provider's discovery document")
        yield provider
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
