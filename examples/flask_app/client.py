"""A small HTTP client for the example's API (standard library only): sign in, trigger,
ask for a follow-up run, read the status and pages. Used by the end-to-end tests and handy from a shell."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_META_TOKEN = re.compile(r'name="csrf-token" content="([^"]+)"')


class Client:
    """One signed-in browser-like session: a cookie jar and the session's CSRF token."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf: str | None = None

    def _open(self, req: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def login(self, username: str, password: str) -> int:
        """Sign in through the HTML form; returns the final HTTP status (200 when signed in)."""
        status, page = self._open(urllib.request.Request(f"{self.base_url}/login"))
        match = _FORM_TOKEN.search(page)
        if status != 200 or not match:
            raise RuntimeError(f"login page {self.base_url}/login: HTTP {status}: {page[:300]!r}")
        body = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": match.group(1)})
        status, page = self._open(urllib.request.Request(f"{self.base_url}/login", data=body.encode(), method="POST"))
        meta = _META_TOKEN.search(page)
        self.csrf = meta.group(1) if meta else None
        return status if "/logout" in page else 401

    def _post_json(self, path: str) -> tuple[int, dict[str, Any]]:
        headers = {"X-CSRF-Token": self.csrf or "", "Accept": "application/json"}
        req = urllib.request.Request(f"{self.base_url}{path}", data=b"", headers=headers, method="POST")
        status, text = self._open(req)
        return status, json.loads(text)

    def trigger(self) -> tuple[int, dict[str, Any]]:
        return self._post_json("/api/email-automation/trigger")

    def follow_up(self) -> tuple[int, dict[str, Any]]:
        """"Run again after the current job": 202 admitted, 409 coalesced or not running."""
        return self._post_json("/api/email-automation/follow-up")

    def get(self, path: str) -> tuple[int, str]:
        """Any page of the signed-in session (e.g. /admin, /metrics): status and body text."""
        return self._open(urllib.request.Request(f"{self.base_url}{path}"))

    def status(self) -> tuple[int, dict[str, Any]]:
        status, text = self._open(urllib.request.Request(f"{self.base_url}/api/email-automation/status"))
        return status, json.loads(text)
