"""Pantry addresses: "ip:port" for IPv4, "[ipv6]:port" for IPv6.

Addresses are parsed into an (ip, port) value so that two spellings of one address
("[fd00::0001]:17000" and "[fd00::1]:17000", "[::ffff:10.0.0.1]:1" and "10.0.0.1:1")
compare equal; `str()` is the one canonical spelling, the one udx stores. Host
names ("localhost:17000") and IPv6 zone ids ("[fe80::1%eth0]:17000") are refused:
a pantry is named by its address, and a zone id means nothing on another host.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from udx.domain.errors import BadInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def format_address(ip: str, port: int) -> str:
    """"ip:port", or "[ipv6]:port" for an IPv6 address."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, order=True)
class PantryAddress:
    ip_text: str  # canonical (compressed) form, so ordering and equality are textual
    port: int

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.ip_text)

    @classmethod
    def from_parts(cls, ip: str | IPAddress, port: int) -> PantryAddress:
        if cls is PantryAddress and isinstance(ip, str) and type(port) is int:
            return _from_text_parts(ip, port)
        return cls._from_parts(ip, port)

    @classmethod
    def _from_parts(cls, ip: str | IPAddress, port: int) -> PantryAddress:
        if isinstance(ip, str) and "%" in ip:
            raise BadInput(_zone_refused(ip))
        try:
            parsed = ip if not isinstance(ip, str) else ipaddress.ip_address(ip.strip())
        except ValueError:
            raise BadInput(f"malformed pantry address: {ip!r} is not an IP address") from None
        if isinstance(parsed, ipaddress.IPv6Address):
            if parsed.scope_id:
                raise BadInput(_zone_refused(str(parsed)))
            if parsed.ipv4_mapped is not None:
                parsed = parsed.ipv4_mapped
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            raise BadInput(f"malformed pantry address: port {port!r} is not in 1..65535")
        return cls(str(parsed), port)

    @classmethod
    def parse(cls, text: str) -> PantryAddress:
        """Parse "ip:port" or "[ipv6]:port"; BadInput with the reason otherwise."""
        if cls is PantryAddress and isinstance(text, str):
            return _parse_text(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> PantryAddress:
        raw = text.strip()
        if "%" in raw:
            raise BadInput(_zone_refused(text))
        if raw.startswith("["):
            host, sep, port_text = raw[1:].partition("]:")
            if not sep:
                raise BadInput(f'malformed pantry address {text!r}: expected "[ipv6]:port"')
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise BadInput(f"malformed pantry address {text!r}: bad IPv6 address") from None
        else:
            host, sep, port_text = raw.rpartition(":")
            if not sep or ":" in host:
                raise BadInput(
                    f'malformed pantry address {text!r}: expected "ip:port" or "[ipv6]:port"'
                )
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                if _looks_like_host_name(host):
                    raise BadInput(
                        f"malformed pantry address {text!r}: {host!r} is a host name; use an "
                        'IP address ("ip:port" or "[ipv6]:port")'
                    ) from None
                raise BadInput(f"malformed pantry address {text!r}: bad IPv4 address") from None
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
            raise BadInput(f"malformed pantry address {text!r}: port must be a number in 1..65535")
        return cls.from_parts(host, int(port_text))

    def __str__(self) -> str:
        return format_address(self.ip_text, self.port)

    @property
    def base_url(self) -> str:
        return f"http://{self}"


# A pass parses the same few pantry addresses several times per export; the
# values are immutable, so remember them. Errors are not cached (lru_cache
# passes exceptions through).
@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> PantryAddress:
    return PantryAddress._parse(text)


@functools.lru_cache(maxsize=4096)
def _from_text_parts(ip: str, port: int) -> PantryAddress:
    return PantryAddress._from_parts(ip, port)


def canonical_address(text: str) -> str:
    """The one stored spelling of an address; BadInput when it is not one."""
    return str(PantryAddress.parse(text))


def _zone_refused(text: str) -> str:
    return (
        f"malformed pantry address {text!r}: IPv6 zone ids (%...) are not supported; "
        "use a global or unique-local address"
    )


def _looks_like_host_name(host: str) -> bool:
    """Letters, digits, '-' and '.', with a letter somewhere (so "300.1.1.1" is an
    address that is wrong, not a name)."""
    return bool(host) and any(c.isalpha() for c in host) and all(
        c.isascii() and (c.isalnum() or c in "-.") for c in host
    )
