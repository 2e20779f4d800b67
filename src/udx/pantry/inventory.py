"""The pantry inventory: which pantry addresses are in service (DESIGN.md section 6).

Three sources, chosen by `[pantry] source`:

- "db" (default): the `pantry` table, managed with `udx pantry add | expunge`.
- "static": `[pantry] addresses` in the config file.
- "dns": SRV records `_crucible-pantry._tcp.<dns_zone>` on `[pantry] dns_servers`,
  each SRV target resolved to its AAAA (then A) records, as upstream does.

A record's pantry is expunged when its address is not in `in_service()`. Because
an empty answer would mark every record for deletion, a source that cannot be
read raises `InventoryUnavailable` (exit 3) rather than answering "none".
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from udx.domain.address import PantryAddress
from udx.domain.errors import BadInput, InventoryUnavailable, UdxError

if TYPE_CHECKING:
    import dns.message
    import dns.name

    from udx.config import Settings
    from udx.db.engine import Database

log = logging.getLogger(__name__)

SRV_SERVICE = "_crucible-pantry._tcp"


@runtime_checkable
class Inventory(Protocol):
    def in_service(self) -> list[PantryAddress]:
        """Every in-service pantry address; InventoryUnavailable if unreadable."""
        ...

    def is_in_service(self, address: PantryAddress) -> bool:
        """Whether `address` (any spelling) is in service."""
        ...


class DbInventory:
    """The `pantry` table."""

    source = "db"

    def __init__(self, db: Database) -> None:
        self.db = db

    def in_service(self) -> list[PantryAddress]:
        from udx.datastore import pantries

        try:
            with self.db.connect() as conn:
                return pantries.in_service(conn)
        except BadInput:
            raise
        except UdxError as err:
            raise InventoryUnavailable(f"cannot read the pantry table: {err}") from err
        except Exception as err:  # a driver error the Database did not translate
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(err, SQLAlchemyError):
                detail = str(getattr(err, "orig", err)).strip().splitlines()[0]
                raise InventoryUnavailable(f"cannot read the pantry table: {detail}") from err
            raise

    def is_in_service(self, address: PantryAddress) -> bool:
        return address in self.in_service()

    def invalid_entries(self) -> list[str]:
        """Rows of the pantry table that are not addresses, each with its fix
        (`in_service` skips them). Raises as `in_service` does."""
        from udx.datastore import pantries

        try:
            with self.db.connect() as conn:
                return [r.describe() for r in pantries.invalid_rows(conn)]
        except UdxError as err:
            raise InventoryUnavailable(f"cannot read the pantry table: {err}") from err

    def __repr__(self) -> str:
        return f"DbInventory({self.db.display_url})"


class StaticInventory:
    """A fixed list (the config file's `[pantry] addresses`)."""

    source = "static"

    def __init__(self, addresses: Iterable[str | PantryAddress]) -> None:
        parsed = [a if isinstance(a, PantryAddress) else PantryAddress.parse(a) for a in addresses]
        self._addresses = sorted(set(parsed))

    def in_service(self) -> list[PantryAddress]:
        return list(self._addresses)

    def is_in_service(self, address: PantryAddress) -> bool:
        return address in self._addresses

    def __repr__(self) -> str:
        return f"StaticInventory({', '.join(map(str, self._addresses))})"


def parse_dns_server(text: str) -> tuple[str, int]:
    """A DNS server as "ip", "ip:port", "[ipv6]" or "[ipv6]:port" (port 53 default)."""
    raw = text.strip()
    try:
        return str(ipaddress.ip_address(raw)), 53
    except ValueError:
        pass
    if raw.startswith("[") and raw.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(raw[1:-1])), 53
        except ValueError:
            pass
    try:
        addr = PantryAddress.parse(raw)
    except BadInput:
        raise BadInput(
            f'malformed DNS server {text!r}: expected "ip", "ip:port" or "[ipv6]:port"'
        ) from None
    return addr.ip_text, addr.port


class DnsInventory:
    """SRV records `_crucible-pantry._tcp.<zone>` on the given DNS servers.

    An empty server list uses the system's resolver configuration. Every call
    asks DNS afresh (no cache): the retry loop's gone-check needs today's answer.
    """

    source = "dns"

    def __init__(self, zone: str, servers: Iterable[str] = (), *, timeout: float = 5.0) -> None:
        import dns.exception
        import dns.name

        zone = zone.strip().rstrip(".")
        if not zone:
            raise BadInput("the DNS zone for pantry SRV records is empty")
        try:
            self.srv_name = dns.name.from_text(f"{SRV_SERVICE}.{zone}")
        except dns.exception.DNSException as err:
            raise BadInput(f"malformed DNS zone {zone!r}: {err}") from None
        self.zone = zone
        self.servers = [parse_dns_server(s) for s in servers]
        self.timeout = timeout

    def _resolver(self) -> object:
        import dns.nameserver
        import dns.resolver

        if self.servers:
            r = dns.resolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in self.servers]
        else:
            r = dns.resolver.Resolver()
        r.timeout = self.timeout
        r.lifetime = self.timeout
        r.cache = None
        return r

    def in_service(self) -> list[PantryAddress]:
        import dns.exception
        import dns.rdatatype
        import dns.resolver

        resolver = self._resolver()
        assert isinstance(resolver, dns.resolver.Resolver)
        where = f"{self.srv_name} on {self._servers_text()}"
        try:
            answer = resolver.resolve(self.srv_name, "SRV", search=False)
        except dns.resolver.NXDOMAIN:
            raise InventoryUnavailable(f"no pantry SRV records: {where} does not exist") from None
        except dns.resolver.NoAnswer:
            raise InventoryUnavailable(f"no pantry SRV records at {where}") from None
        except dns.exception.DNSException as err:
            raise InventoryUnavailable(
                f"cannot look up pantry SRV records {where}: {err}"
            ) from None

        additional = _addresses_by_name(answer.response)
        found: set[PantryAddress] = set()
        for srv in answer:
            target = srv.target
            ips = additional.get(target)
            if not ips:
                ips = self._resolve_target(resolver, target)
            if not ips:
                # Fail closed: dropping the target would make its pantry look
                # expunged, and the pass would tear down every export on it.
                raise InventoryUnavailable(
                    f"pantry SRV target {target} at {where} resolves to no address"
                )
            for ip in ips:
                try:
                    found.add(PantryAddress.from_parts(ip, int(srv.port)))
                except BadInput as err:
                    log.warning("ignoring pantry SRV record %s: %s", target, err)
        if not found:
            raise InventoryUnavailable(f"pantry SRV records at {where} resolve to no address")
        return sorted(found)

    def _resolve_target(self, resolver: object, target: dns.name.Name) -> list[str]:
        import dns.exception
        import dns.resolver

        assert isinstance(resolver, dns.resolver.Resolver)
        ips: list[str] = []
        for rdtype in ("AAAA", "A"):  # the underlay is IPv6; A for test and lab setups
            try:
                ans = resolver.resolve(target, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as err:
                raise InventoryUnavailable(f"cannot resolve pantry host {target}: {err}") from None
            ips.extend(r.address for r in ans)
        return ips

    def is_in_service(self, address: PantryAddress) -> bool:
        return address in self.in_service()

    def _servers_text(self) -> str:
        if not self.servers:
            return "the system resolver"
        return ", ".join(str(PantryAddress.from_parts(ip, port)) for ip, port in self.servers)

    def __repr__(self) -> str:
        return f"DnsInventory({self.srv_name} @ {self._servers_text()})"


def _addresses_by_name(response: dns.message.Message | None) -> dict[dns.name.Name, list[str]]:
    """AAAA and A records in the additional section, by owner name (internal DNS
    servers send them with the SRV answer, saving a query per target)."""
    import dns.rdatatype

    out: dict[dns.name.Name, list[str]] = {}
    if response is None:
        return out
    for rrset in response.additional:
        if rrset.rdtype in (dns.rdatatype.AAAA, dns.rdatatype.A):
            out.setdefault(rrset.name, []).extend(r.address for r in rrset)
    return out


def invalid_entries(inventory: Inventory) -> list[str]:
    """What an inventory skipped as not an address (only the pantry table can hold
    such rows: the static list and DNS answers are checked when read)."""
    find = getattr(inventory, "invalid_entries", None)
    return list(find()) if find is not None else []


def inventory_from_settings(settings: Settings, db: Database | None) -> Inventory:
    """The inventory the configuration names. `db` is needed for source "db"."""
    p = settings.pantry
    if p.source == "static":
        return StaticInventory(p.addresses)
    if p.source == "dns":
        return DnsInventory(p.dns_zone, p.dns_servers, timeout=p.request_timeout_secs)
    if db is None:
        raise InventoryUnavailable(
            "the pantry inventory is the pantry table, but no database is open"
        )
    return DbInventory(db)
