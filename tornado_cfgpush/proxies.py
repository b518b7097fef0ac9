"""Trusted proxies (``--trusted-proxy``): the client's address and scheme behind a reverse proxy.

Behind nginx, Caddy or a load balancer, every connection comes from the proxy: the
per-address limit would count the proxy, and the logs would show only it. The proxy says who
its client was in ``X-Forwarded-For`` (or RFC 7239's ``Forwarded``), and which scheme it was
reached by in ``X-Forwarded-Proto`` (or ``Forwarded: proto=``). Anyone can send those headers,
so they are read only from a peer inside a ``--trusted-proxy`` network, and then only as far
as they can be believed: each proxy appends the address it received the request from, so the
list is walked from its right end, over the trusted proxies, and the first address that is not
one of them is the client (the right-most untrusted hop, as RFC 7239 section 8.1 and MDN advise).
Whatever a client wrote itself stays to the left of it and is never used.

``X-Forwarded-For`` is read when present, else ``Forwarded``: a proxy that sets one of them
must also set (or clear) it on every request, as docs/deploy/nginx.conf does, so that a client
cannot supply the one the server reads.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Headers(Protocol):
    """A request's headers, as Tornado's ``HTTPHeaders`` (every value of a repeated header)."""

    def get_list(self, name: str) -> list[str]: ...


# One pair of a Forwarded element: name=token or name="quoted string".
_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


def parse_network(text: str) -> str:
    """One ``--trusted-proxy``: an address or a CIDR network (``10.0.0.0/8``, ``::1``)."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(f"trusted proxy {text.strip()!r} is not an IP address or network (10.0.0.0/8, ::1)") from None


def parse_networks(text: str) -> tuple[str, ...]:
    """Comma-separated ``--trusted-proxy`` values (the flag is repeatable)."""
    return tuple(dict.fromkeys(parse_network(t) for t in text.split(",") if t.strip()))


def parse_address(text: str) -> Address | None:
    """A hop's address: ``192.0.2.1``, ``192.0.2.1:4711``, ``[2001:db8::1]:4711``, ``2001:db8::1``
    (quotes removed); None for ``unknown``, an obfuscated ``_name`` or anything else."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_elements(values: Iterable[str]) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` header values -> one dict per hop (lower-case names, unquoted values)."""
    elements: list[dict[str, str]] = []
    for value in values:
        current: dict[str, str] = {}
        position = 0
        while position < len(value):
            found = _PAIR.match(value, position)
            if found is None:  # not a pair: skip to the next separator
                nxt = min((i for i in (value.find(";", position), value.find(",", position)) if i >= 0), default=-1)
                if nxt < 0:
                    break
                position = nxt
            else:
                name, raw = found.group(1).lower(), found.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                current.setdefault(name, raw)
                position = found.end()
            if position < len(value) and value[position] == ";":
                position += 1
            elif position < len(value) and value[position] == ",":
                elements.append(current)
                current = {}
                position += 1
        elements.append(current)
    return [e for e in elements if e]


class TrustedProxies:
    """The networks of ``--trusted-proxy``, and the client a request is from."""

    def __init__(self, networks: Sequence[str]):
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def trusts(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str, headers: Headers) -> tuple[str, str | None]:
        """``(client address, scheme or None)`` of a request from ``peer`` with ``headers``
        (Tornado's ``HTTPHeaders``: ``get_list``). From an untrusted peer: ``(peer, None)``."""
        if not self.trusts(parse_address(peer)):
            return peer, None
        get_list = headers.get_list
        forwarded_for = get_list("X-Forwarded-For")
        elements: list[dict[str, str]] = []
        if forwarded_for:
            hops = [hop for value in forwarded_for for hop in value.split(",")]
        else:
            elements = forwarded_elements(get_list("Forwarded"))
            hops = [element.get("for", "") for element in elements]
        client, chosen = peer, None
        for index in range(len(hops) - 1, -1, -1):
            address = parse_address(hops[index])
            if address is None:  # unreadable: the proxy that wrote it is as far as we can see
                break
            client, chosen = str(address), index
            if not self.trusts(address):
                break
        return client, self._scheme(get_list, elements, chosen)

    @staticmethod
    def _scheme(get_list: Callable[[str], list[str]], elements: list[dict[str, str]], chosen: int | None) -> str | None:
        """The scheme the client used: the nearest proxy's ``X-Forwarded-Proto`` (its last
        value), else the ``proto`` of the client's ``Forwarded`` element."""
        values = [v.strip().lower() for value in get_list("X-Forwarded-Proto") for v in value.split(",")]
        proto = values[-1] if values else None
        if proto is None and chosen is not None and elements:
            proto = elements[chosen].get("proto", "").lower() or None
        if proto in ("https", "wss"):
            return "https"
        if proto in ("http", "ws"):
            return "http"
        return None
