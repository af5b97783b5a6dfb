"""Where a webhook may send: public addresses only (unless private ones are allowed).

A URL's host is resolved, and every address it resolves to must be a public one: not
loopback, link-local, private, shared (carrier-grade NAT), multicast, unspecified or
reserved, in IPv4 or IPv6 (an IPv4-mapped or -translated IPv6 address is judged by its
IPv4 address). It is checked when a webhook is registered or changed and again before
every delivery, which then connects to the address that was checked (DNS may answer
differently the next time), keeping the host name for ``Host`` and TLS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from libs.domain.errors import InvalidInput

RESOLVE_SECONDS = 5.0
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedTarget(InvalidInput):
    """The URL's host resolves to an address webhooks may not reach (or to none)."""

    code = "webhook_target_refused"
    default_field = "url"


@dataclass(frozen=True)
class Target:
    """A URL and the address to connect to for it."""

    url: str
    host: str
    port: int
    address: str | None  # None: not checked (private addresses allowed), connect by name

    def connect_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        if self.address is None:
            return self.url
        parts = urlsplit(self.url)
        ip = ipaddress.ip_address(self.address)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = f"{host}:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    @property
    def host_header(self) -> str:
        parts = urlsplit(self.url)
        return parts.netloc


def forbidden_reason(address: Address) -> str | None:
    """Why webhooks may not reach ``address``; None when they may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return forbidden_reason(embedded)
    for reason, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return reason
    if not address.is_global:
        return "not public"
    return None


async def resolve(url: str, *, allow_private: bool) -> Target:
    """The address to deliver ``url`` to, checked; :class:`RefusedTarget` when there is
    none or any address the host resolves to is not public. With ``allow_private`` there
    is nothing to check: the host is not looked up here (the connection resolves it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if allow_private:
        return Target(url, host, port, None)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[Address] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_SECONDS
            )
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise RefusedTarget(f"url: host {host!r} does not resolve ({exc})") from None
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise RefusedTarget(f"url: host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is not None:
                raise RefusedTarget(
                    f"url: {host!r} resolves to {address}, a {reason} address; webhooks "
                    "deliver to public addresses only",
                    details={"address": str(address), "reason": reason},
                )
    return Target(url, host, port, str(addresses[0]))
