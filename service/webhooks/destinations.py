"""Where webhooks may go: http(s) URLs of allowed hosts whose every address is public, unless allowed.

A request forger (SSRF) would point a webhook at the cloud's metadata service (169.254.169.254),
at loopback, or at a private network the service can reach and its users cannot. So a URL's
host must match FITJOBS_WEBHOOK_ALLOWED_HOSTS (when set), and every address it resolves to must
be global (``ipaddress.is_global``) or lie in FITJOBS_WEBHOOK_ALLOWED_NETWORKS. The sender resolves
a host once, checks every address, and connects to the checked address itself, so a second DNS
answer (DNS rebinding) never decides where a delivery goes.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2048


class DestinationRefused(ValueError):
    """A webhook URL, or an address its host resolves to, is not an allowed destination."""


@dataclass(frozen=True)
class Destination:
    """A checked webhook URL, split into what a connection needs."""

    scheme: str
    host: str  # lower case, without the brackets of an IPv6 literal
    port: int
    target: str  # path and query, as the request line carries them
    host_header: str


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver (one lookup), in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDR networks (`10.0.0.0/8`, `127.0.0.1/32`, `fd00::/8`); ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network like 10.0.0.0/8 or 127.0.0.1/32") from exc
    return tuple(networks)


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class DestinationPolicy:
    """The rules a webhook URL and its addresses must pass (FITJOBS_WEBHOOK_ALLOWED_*)."""

    # fnmatch patterns of host names (or IP literals); empty allows every host.
    allowed_hosts: tuple[str, ...] = ()
    # Non-global addresses that are allowed all the same (an internal receiver, a test's loopback).
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Callable[[str, int], list[str]] = field(default=resolve_host, compare=False)

    def parse(self, url: str) -> Destination:
        """Split and check a URL's form and host name; DestinationRefused says what is wrong."""
        if len(url) > MAX_URL_LENGTH:
            raise DestinationRefused(f"is longer than {MAX_URL_LENGTH} characters")
        if not url.isascii() or any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
            raise DestinationRefused("must be ASCII without spaces or control characters (encode an "
                                     "international host name as punycode)")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise DestinationRefused("must be an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise DestinationRefused("must not carry credentials; receivers verify the signature instead")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise DestinationRefused("names no host")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise DestinationRefused("has an invalid port") from exc
        if self.allowed_hosts and not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.allowed_hosts):
            raise DestinationRefused(f"names host {host!r}, which FITJOBS_WEBHOOK_ALLOWED_HOSTS does not allow")
        literal = _address(host)
        shown = f"[{host}]" if literal is not None and literal.version == 6 else host
        host_header = shown if parts.port is None else f"{shown}:{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Destination(scheme=scheme, host=host, port=port, target=target, host_header=host_header)

    def check_address(self, address: IPAddress) -> None:
        """Refuse an address that is not global, multicast included, unless an allowed network holds it."""
        # An IPv4 address written as IPv6 (::ffff:127.0.0.1) is judged as the IPv4 address it is.
        judged: IPAddress = (address.ipv4_mapped
                             if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address)
        if any(judged in network or address in network for network in self.allowed_networks):
            return
        if not judged.is_global or judged.is_multicast:
            raise DestinationRefused(f"leads to {address}, a private, loopback, link-local or otherwise "
                                     "non-public address (FITJOBS_WEBHOOK_ALLOWED_NETWORKS can allow it)")

    def addresses(self, destination: Destination) -> list[IPAddress]:
        """Resolve the host once and check every address; DestinationRefused if one is refused or none is found."""
        literal = _address(destination.host)
        if literal is not None:
            found = [literal]
        else:
            try:
                texts = self.resolver(destination.host, destination.port)
            except (OSError, UnicodeError) as exc:
                raise DestinationRefused(f"names host {destination.host!r}, which does not resolve: {exc}") from exc
            found = [address for text in texts if (address := _address(text.split("%", 1)[0])) is not None]
            if not found:
                raise DestinationRefused(f"names host {destination.host!r}, which resolves to no address")
        for address in found:
            self.check_address(address)
        return found

    def check(self, url: str) -> tuple[Destination, list[IPAddress]]:
        """The checked destination of a URL and its checked addresses; DestinationRefused otherwise."""
        destination = self.parse(url)
        return destination, self.addresses(destination)
