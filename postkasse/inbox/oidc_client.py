"""Talking to the organisation's OpenID Connect provider: its discovery document and keys, the code
exchange, and the checks of the ID token (signature, issuer, audience, nonce, expiry).

Every call to the provider is bounded by `TIMEOUT`; what the provider publishes is kept for an hour, and
its keys are read again once when a token is signed with a key not yet seen (the provider rotated them).
The pending login (state, nonce, PKCE verifier, where to go next) rides in a short-lived cookie signed with
a key derived from the client secret, so any instance of postkasse can finish a login another one began.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from postkasse.config import OidcSettings

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
KEEP_METADATA_SECONDS = 3600.0
PENDING_SECONDS = 600
LEEWAY_SECONDS = 60
# Asymmetric signatures only: a token "signed" with the client secret (HS256) or not at all is refused.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class ProviderTrouble(Exception):
    """The provider did not answer, or answered nonsense: nothing the user can fix."""


class LoginRefused(Exception):
    """The provider's answer does not prove who the user is; `why` goes to the audit."""

    def __init__(self, why: str, who: str = "") -> None:
        super().__init__(why)
        self.why = why
        self.who = who


@dataclass(frozen=True)
class Pending:
    state: str
    nonce: str
    verifier: str
    next: str


@dataclass
class _Published:
    metadata: dict[str, Any]
    keys: KeySet
    at: float


_published: dict[str, _Published] = {}


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await client.get(url)
        response.raise_for_status()
        found = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ProviderTrouble(f"{url}: {type(exc).__name__}") from None
    if not isinstance(found, dict):
        raise ProviderTrouble(f"{url}: not a JSON object")
    return found


async def published(settings: OidcSettings, fresh: bool = False) -> _Published:
    """The provider's discovery document and signing keys, read at most once an hour unless `fresh`."""
    kept = _published.get(settings.issuer)
    if kept is not None and not fresh and time.monotonic() - kept.at < KEEP_METADATA_SECONDS:
        return kept
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        metadata = await _get_json(client, settings.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if metadata.get("issuer") != settings.issuer:
            raise ProviderTrouble("the discovery document names another issuer")
        for needed in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(needed), str):
                raise ProviderTrouble(f"the discovery document has no {needed}")
        try:
            keys = KeySet.import_key_set(await _get_json(client, metadata["jwks_uri"]))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError) as exc:
            raise ProviderTrouble(f"the provider's keys: {type(exc).__name__}") from None
    kept = _Published(metadata, keys, time.monotonic())
    _published[settings.issuer] = kept
    return kept


def begin(
    settings: OidcSettings, metadata: dict[str, Any], redirect_uri: str, target: str
) -> tuple[str, Pending]:
    """Where to send the browser to log in, and what to keep until it comes back."""
    pending = Pending(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48), target)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": settings.scope,
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": create_s256_code_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
    )
    endpoint: str = metadata["authorization_endpoint"]
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", pending


def _signing_key(settings: OidcSettings) -> bytes:
    return hmac.new(settings.client_secret().encode(), b"postkasse: pending OIDC login", "sha256").digest()


def seal(settings: OidcSettings, pending: Pending, now: float) -> str:
    body = json.dumps(
        {"s": pending.state, "n": pending.nonce, "v": pending.verifier, "x": pending.next, "t": now}
    )
    # Without padding: '=' would make the cookie value a quoted string, which not every client unquotes.
    encoded = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    mac = hmac.new(_signing_key(settings), encoded.encode(), hashlib.sha256).hexdigest()
    return f"{encoded}.{mac}"


def unseal(settings: OidcSettings, cookie: str, now: float) -> Pending | None:
    """The pending login of this cookie; None when it is missing, forged or older than PENDING_SECONDS."""
    encoded, _, mac = cookie.partition(".")
    expected = hmac.new(_signing_key(settings), encoded.encode(), hashlib.sha256).hexdigest()
    if not cookie or not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        pending = Pending(str(body["s"]), str(body["n"]), str(body["v"]), str(body["x"]))
        started = float(body["t"])
    except (ValueError, KeyError, TypeError):
        return None
    return pending if 0 <= now - started <= PENDING_SECONDS else None


async def exchange(
    settings: OidcSettings, metadata: dict[str, Any], code: str, redirect_uri: str, verifier: str
) -> dict[str, Any]:
    """The provider's token response for this code; LoginRefused when it will not give one."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    auth: httpx.Auth = httpx.Auth()  # none: the secret goes in the form
    if "client_secret_basic" in methods:
        # RFC 6749 2.3.1: both are form-encoded before they go into the Basic header.
        auth = httpx.BasicAuth(quote_plus(settings.client_id), quote_plus(settings.client_secret()))
    else:
        form |= {"client_id": settings.client_id, "client_secret": settings.client_secret()}
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        try:
            response = await client.post(metadata["token_endpoint"], data=form, auth=auth)
        except httpx.HTTPError as exc:
            raise ProviderTrouble(f"token endpoint: {type(exc).__name__}") from None
    if response.status_code in (400, 401):
        raise LoginRefused("code_refused")
    try:
        response.raise_for_status()
        found = response.json()
    except (httpx.HTTPError, ValueError):
        raise ProviderTrouble(f"token endpoint answered {response.status_code}") from None
    if not isinstance(found, dict) or not isinstance(found.get("id_token"), str):
        raise ProviderTrouble("the token response has no ID token")
    return found


async def identity(settings: OidcSettings, tokens: dict[str, Any], nonce: str, now: float) -> dict[str, Any]:
    """The ID token's claims, once its signature, issuer, audience, nonce and times are right."""
    kept = await published(settings)
    try:
        token = jwt.decode(tokens["id_token"], kept.keys, algorithms=ALGORITHMS)
    except JoseError:
        # Perhaps signed with a key the provider has added since: read its keys once more.
        kept = await published(settings, fresh=True)
        try:
            token = jwt.decode(tokens["id_token"], kept.keys, algorithms=ALGORITHMS)
        except JoseError:
            raise LoginRefused("id_token_signature") from None
    claims = CodeIDToken(
        token.claims,
        token.header,
        options={
            "iss": {"essential": True, "value": settings.issuer},
            "aud": {"essential": True, "value": settings.client_id},
            "nonce": {"essential": True, "value": nonce},
        },
        params={"nonce": nonce, "client_id": settings.client_id, "access_token": tokens.get("access_token")},
    )
    try:
        claims.validate(now=int(now), leeway=LEEWAY_SECONDS)
    except Exception:  # joserfc's errors, or authlib.jose's in older Authlib: any failure is a refusal
        raise LoginRefused("id_token_claims") from None
    return dict(claims)
