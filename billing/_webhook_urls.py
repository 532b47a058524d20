"""Which webhook URLs Veilbill will call: receivers are untrusted, so outbound requests are fenced.

A URL must be absolute ``http``/``https``, without credentials or fragment, at most 2000
characters. Its host is resolved, and **every** address it resolves to must be public: loopback,
private (RFC 1918, unique-local), link-local (cloud metadata at 169.254.169.254), carrier-grade
NAT, documentation, benchmarking and other reserved ranges are refused, as are IPv4-mapped IPv6
forms of them. Multicast and unspecified addresses are refused even when private addresses are
allowed (``allow_private``, for development receivers on loopback).

The check runs when an endpoint is registered and again before each delivery, and the delivery
connects to the very address that was checked (never resolving again), so a DNS answer that
changes in between (DNS rebinding) cannot redirect a delivery to an internal host.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from billing.errors import WebhookUrlInvalid, WebhookUrlRefused

__all__ = ["MAX_URL_LENGTH", "Destination", "DestinationPolicy", "address_allowed", "system_resolver"]

MAX_URL_LENGTH = 2000

Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), through the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_allowed(address: str, *, allow_private: bool) -> bool:
    """True when a delivery may connect to ``address`` (an IP literal)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified:
        return False
    if allow_private:
        return True
    return ip.is_global and not (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved)


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked URL and the public address a delivery connects to."""

    url: str
    scheme: str
    host: str
    port: int
    target: str
    address: str

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the host (the Host header keeps the name)."""
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{literal}:{self.port}{self.target}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Where outbound webhooks may go; ``resolver`` is injectable so tests need no DNS."""

    allow_private: bool = False
    resolver: Resolver = field(default=system_resolver)

    def parse(self, url: str) -> SplitResult:
        """The parts of a well-formed webhook URL.

        Raises:
            WebhookUrlInvalid: not absolute http(s), credentials or fragment present, bad port, too long.
        """
        if len(url) > MAX_URL_LENGTH or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
            raise WebhookUrlInvalid(field="url")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise WebhookUrlInvalid(field="url") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookUrlInvalid(field="url")
        if parts.username is not None or parts.password is not None or parts.fragment or "#" in url:
            raise WebhookUrlInvalid(field="url")
        if port == 0:
            raise WebhookUrlInvalid(field="url")
        return parts

    def check(self, url: str) -> Destination:
        """Resolve ``url``'s host and pick the address to connect to.

        Raises:
            WebhookUrlInvalid: see :meth:`parse`.
            WebhookUrlRefused: the host does not resolve, or any of its addresses is not allowed.
        """
        parts = self.parse(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = list(self.resolver(host, port))
        except (OSError, UnicodeError):
            raise WebhookUrlRefused(field="url") from None
        if not addresses or not all(
            address_allowed(address, allow_private=self.allow_private) for address in addresses
        ):
            raise WebhookUrlRefused(field="url")
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        return Destination(
            url=url, scheme=parts.scheme, host=host, port=port, target=target, address=addresses[0]
        )
