"""The client's IP address: the direct peer, or what trusted proxies say it is.

``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) are believed only when the
direct peer is inside one of ``VOXGATE_TRUSTED_PROXIES``; otherwise anyone
could name any address and dodge per-IP limits. The chain is read right to
left, skipping hops that are themselves trusted proxies: the first address
that is not is the client. An entry that is not an IP address (``unknown``,
an obfuscated name) stops the walk at the last hop known to be real.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Where the resolved address is kept in the ASGI scope, so it is computed once.
SCOPE_KEY = "voxgate.client_ip"
UNKNOWN = "unknown"


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from CIDR strings (a bare address is a /32 or /128); raises ValueError."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def _address(value: str) -> IPAddress | None:
    """An address from a header entry: bare, ``[v6]``, ``[v6]:port`` or ``v4:port``."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:  # IPv4 with a port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` header, in order."""
    out: list[str] = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            name, _, param = pair.partition("=")
            if name.strip().lower() == "for":
                found = param.strip()
        out.append(found)
    return out


def _chain(headers: list[tuple[bytes, bytes]]) -> list[str] | None:
    """Forwarded hops, oldest first; ``Forwarded`` wins over ``X-Forwarded-For``."""
    forwarded: list[str] = []
    x_forwarded: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"forwarded":
            forwarded.extend(_forwarded_for(value.decode("latin-1")))
        elif lowered == b"x-forwarded-for":
            x_forwarded.extend(part for part in value.decode("latin-1").split(","))
    if forwarded:
        return forwarded
    return x_forwarded or None


def _trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def resolve(
    peer: str | None, headers: list[tuple[bytes, bytes]], trusted: tuple[IPNetwork, ...]
) -> str:
    """The client address for a connection from ``peer`` carrying ``headers``."""
    if peer is None:
        return UNKNOWN
    current = _address(peer)
    if current is None:
        return peer
    if not trusted or not _trusted(current, trusted):
        return str(current)
    chain = _chain(headers)
    if not chain:
        return str(current)
    for entry in reversed(chain):
        hop = _address(entry)
        if hop is None:
            break
        current = hop
        if not _trusted(hop, trusted):
            break
    return str(current)


def client_ip(scope: Mapping[str, Any], trusted: tuple[IPNetwork, ...]) -> str:
    """The client address of an ASGI connection, cached in its scope."""
    cached = scope.get(SCOPE_KEY)
    if isinstance(cached, str):
        return cached
    client = scope.get("client")
    peer = str(client[0]) if client else None
    address = resolve(peer, list(scope.get("headers") or ()), trusted)
    if isinstance(scope, dict):
        scope[SCOPE_KEY] = address
    return address
