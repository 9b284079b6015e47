"""Forwarded headers, believed only from trusted proxies.

`X-Forwarded-Host`, `X-Forwarded-Proto` and `X-Forwarded-For` are plain request headers: anyone can
send them. They describe the original request only when a reverse proxy we run set them, so they
count only when the direct peer (the TCP connection's address) is listed in
`TOKENTRAIL_TRUSTED_PROXIES` (comma-separated addresses or CIDR blocks; default: none). Everything
in the server that wants the public host, scheme or client address asks this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ENV = "TOKENTRAIL_TRUSTED_PROXIES"


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`10.0.0.1, 10.1.0.0/16, ::1` → networks; a malformed entry is an error at start-up."""
    networks = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{ENV}: {part!r} is not an address or CIDR block") from None
    return tuple(networks)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class TrustedProxies:
    def __init__(self, networks: tuple[Network, ...] = ()) -> None:
        self.networks = networks

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TrustedProxies:
        return cls(parse_networks(environ.get(ENV, "")))

    def trusts(self, peer: str | None) -> bool:
        address = _address(peer)
        return address is not None and any(address in network for network in self.networks)

    def _trusted_peer(self, request: Request) -> bool:
        return bool(self.networks) and request.client is not None and self.trusts(request.client.host)

    def host(self, request: Request) -> str:
        """The host the browser addressed: X-Forwarded-Host from a trusted proxy, else Host."""
        if self._trusted_peer(request):
            forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
            if forwarded:
                return forwarded
        return request.headers.get("host", "")

    def scheme(self, request: Request) -> str:
        """http or https as the browser used it: X-Forwarded-Proto from a trusted proxy."""
        if self._trusted_peer(request):
            forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
            if forwarded in ("http", "https"):
                return forwarded
        return request.url.scheme

    def client_address(self, request: Request) -> str | None:
        """The client's address: the direct peer, or, when that is a trusted proxy, the nearest
        address in X-Forwarded-For (read from the right) that is not itself a trusted proxy."""
        peer = request.client.host if request.client else None
        if not self._trusted_peer(request):
            return peer
        chain = [part.strip() for part in request.headers.get("x-forwarded-for", "").split(",") if part.strip()]
        for hop in reversed(chain):
            if _address(hop) is None:
                break  # a garbled entry: believe nothing further left
            if not self.trusts(hop):
                return hop
        return peer


def proxies(request: Request) -> TrustedProxies:
    """The app's TrustedProxies (made from the service's environment by create_app)."""
    found = getattr(request.app.state, "proxies", None)
    if found is None:
        found = request.app.state.proxies = TrustedProxies.from_environ(request.app.state.service.environ)
    return found
