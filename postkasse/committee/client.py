"""A small client of the committee API, as a case system would use it; behind `postkasse queue pull`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ApiClientError(RuntimeError):
    """The API answered with an error; the message carries its code and sentence."""


class ApiClient:
    def __init__(self, base_url: str, token: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[bytes, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.read(), response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())
                raise ApiClientError(f"{exc.code} {error.get('code')}: {error.get('detail')}") from None
            except ValueError:
                raise ApiClientError(f"{exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise ApiClientError(f"cannot reach {self.base_url}: {exc.reason}") from None

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return json.loads(self.request(method, path, body)[0])


@dataclass
class PullResult:
    pulled: list[str] = field(default_factory=list)  # references saved and marked pulled
    failed: list[str] = field(default_factory=list)  # "PK-000001 (id 1): the API's error", no content


def pull_queue(client: ApiClient, municipality: str, out: Path) -> PullResult:
    """Save each new referral (JSON and the original message) and mark it pulled.

    Files are written before the pull, so a referral is never marked taken without being saved. A referral
    that cannot be fetched is passed over and named in `failed`: one bad referral never holds up the rest."""
    out.mkdir(parents=True, exist_ok=True)
    result = PullResult()
    cursor = 0
    while True:
        page = client.json(
            "GET", f"/api/v1/municipalities/{municipality}/referrals?state=new&cursor={cursor}"
        )
        if not page["items"]:
            return result
        for item in page["items"]:
            cursor = item["id"]
            try:
                referral = client.json("GET", f"/api/v1/referrals/{item['id']}")
                raw, _ = client.request("GET", f"/api/v1/referrals/{item['id']}/raw")
                (out / f"{item['reference']}.eml").write_bytes(raw)
                (out / f"{item['reference']}.json").write_text(
                    json.dumps(referral, ensure_ascii=False, indent=2)
                )
                client.json("POST", f"/api/v1/referrals/{item['id']}/pull")
            except ApiClientError as exc:
                result.failed.append(f"{item['reference']} (id {item['id']}): {exc}")
                continue
            result.pulled.append(item["reference"])
