"""The CLI's HTTP client for a tokentrail server: one place that builds URLs the way the server
reads them, marks requests as coming from the CLI, and turns every failure into one line.

Parameters are percent-encoded with `%20` for spaces, never `+`: the server reads `scope=` values
as Tinybird's CLIs send them, where a `+` is a literal plus (a filter such as `a + b > 1`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from tokentrail.api.cli.common import DEFAULT_HOST, ERROR, UNREACHABLE, fail

Params = Sequence[tuple[str, Any]]
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def query_string(params: Params) -> str:
    pairs = [
        f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in params if v is not None and v is not False
    ]
    return ("?" + "&".join(pairs)) if pairs else ""


def path_segment(ref: str) -> str:
    """A token's id, name or value as one URL path segment."""
    return quote(ref, safe="")


def normalise_host(host: str) -> str:
    host = (host or DEFAULT_HOST).strip().rstrip("/")
    return host if "://" in host else f"http://{host}"


class Client:
    """Requests to one server with one token; every method returns parsed JSON or exits."""

    def __init__(self, host: str | None, token: str | None) -> None:
        if not token:
            fail("no token: pass --token or set TOKENTRAIL_TOKEN (tokentrail init --quiet prints the admin token)")
        self.host = normalise_host(host or DEFAULT_HOST)
        try:
            self.http = httpx.Client(
                base_url=self.host,
                timeout=TIMEOUT,
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-Tokentrail-Origin": "cli",
                    "User-Agent": "tokentrail-cli",
                },
            )
        except (httpx.InvalidURL, ValueError) as error:
            fail(f"--host {host!r} is not a URL: {error}")

    def get(self, path: str, params: Params = ()) -> Any:
        return self.request("GET", path, params)

    def post(self, path: str, params: Params = (), body: Any = None) -> Any:
        return self.request("POST", path, params, body)

    def put(self, path: str, params: Params = ()) -> Any:
        return self.request("PUT", path, params)

    def delete(self, path: str, params: Params = ()) -> Any:
        return self.request("DELETE", path, params)

    def request(self, method: str, path: str, params: Params = (), body: Any = None) -> Any:
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else {}
        with self._guard():
            response = self.http.request(method, path + query_string(params), content=content, headers=headers)
        self._check(response)
        try:
            return response.json()
        except ValueError:
            fail(f"the server at {self.host} answered {method} {path} with something that is not JSON")

    @contextmanager
    def stream(self, path: str, params: Params = ()) -> Iterator[httpx.Response]:
        """A streamed GET whose status has been checked before the caller reads the body."""
        with self._guard():
            with self.http.stream("GET", path + query_string(params)) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                yield response

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except httpx.UnsupportedProtocol:
            fail(f"--host {self.host!r} is not an http:// or https:// URL")
        except httpx.TimeoutException:
            fail(f"the tokentrail server at {self.host} did not answer in time", UNREACHABLE)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.NetworkError) as error:
            reason = _reason(error)
            fail(
                f"cannot reach the tokentrail server at {self.host} ({reason}); "
                "start it with 'tokentrail serve' or pass --host / set TOKENTRAIL_HOST",
                UNREACHABLE,
            )

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            message = response.json().get("error")
        except (ValueError, AttributeError):
            message = None
        if not message:
            message = response.reason_phrase or "request failed"
        hint = ""
        # Only when the token itself was refused: a correct token refused an operation is not the
        # token's fault ("default tokens cannot be deleted").
        if response.status_code == 403 and message.startswith(("invalid authentication token", "a token is required")):
            hint = " (check --token / TOKENTRAIL_TOKEN)"
        fail(f"{message} (HTTP {response.status_code}){hint}", ERROR)


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    if "refused" in text.lower():
        return "connection refused"
    if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
        return "unknown host name"
    return text.splitlines()[0][:120]


def client(host: str | None, token: str | None) -> Client:
    return Client(host, token)


def remote_client(host: str | None, token: str | None) -> Client | None:
    """For commands that open the store unless --host/--token was given: a client, or None."""
    if host is None and token is None:
        return None
    return Client(
        host or os.environ.get("TOKENTRAIL_HOST") or DEFAULT_HOST, token or os.environ.get("TOKENTRAIL_TOKEN")
    )
