"""Inventory sources: the pantry table, a static list, DNS SRV records (on a fake
DNS server on loopback), and address normalisation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pantry.fakedns import FakeDns
from udx.config import Settings
from udx.datastore import pantries
from udx.db.engine import Database
from udx.domain.address import PantryAddress
from udx.domain.errors import BadInput, InventoryUnavailable, NotFound
from udx.pantry.inventory import (
    DbInventory,
    DnsInventory,
    Inventory,
    StaticInventory,
    inventory_from_settings,
    parse_dns_server,
)

A = PantryAddress.parse
ZONE = "control-plane.oxide.internal"
SRV = f"_crucible-pantry._tcp.{ZONE}."


# --- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a,b",
    [
        ("[fd00::0001]:17000", "[fd00:0:0::1]:17000"),
        ("[FD00::1]:17000", "[fd00::1]:17000"),
        (" 127.0.0.1:80 ", "127.0.0.1:80"),
        ("[::ffff:10.0.0.1]:80", "10.0.0.1:80"),
    ],
)
def test_two_spellings_compare_equal(a: str, b: str) -> None:
    assert A(a) == A(b) and str(A(a)) == str(A(b))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "fd00::1:80",
        "[fd00::1]",
        "300.1.1.1:80",
        "[127.0.0.1]:80",
        "host:80",
        "127.0.0.1:x",
    ],
)
def test_bad_addresses_are_rejected(bad: str) -> None:
    with pytest.raises(BadInput) as info:
        StaticInventory([bad])
    assert info.value.exit_code == 2


# --- static ---------------------------------------------------------------------------


def test_static_inventory_normalises_and_dedupes() -> None:
    inv = StaticInventory(["[fd00::0001]:17000", "[fd00::1]:17000", "127.0.0.2:1", "127.0.0.1:1"])
    assert [str(a) for a in inv.in_service()] == ["127.0.0.1:1", "127.0.0.2:1", "[fd00::1]:17000"]
    assert inv.is_in_service(A("[fd00:0::1]:17000"))
    assert not inv.is_in_service(A("[fd00::1]:17001"))
    assert isinstance(inv, Inventory)


# --- the pantry table -----------------------------------------------------------------


def test_pantry_table(db: Database) -> None:
    with db.begin() as conn:
        assert pantries.add(conn, A("[fd00::0001]:17000")) == "added"
        assert pantries.add(conn, A("[fd00::1]:17000")) == "already_in_service"
        assert pantries.add(conn, A("127.0.0.1:17000")) == "added"
    inv = DbInventory(db)
    assert inv.in_service() == [A("127.0.0.1:17000"), A("[fd00::1]:17000")]
    assert inv.is_in_service(A("[fd00:0:0::1]:17000"))
    with db.begin() as conn:
        assert pantries.expunge(conn, A("[fd00::1]:17000")) == "expunged"
        assert pantries.expunge(conn, A("[fd00::1]:17000")) == "already_expunged"
        with pytest.raises(NotFound):
            pantries.expunge(conn, A("127.0.0.9:1"))
    assert inv.in_service() == [A("127.0.0.1:17000")]
    assert not inv.is_in_service(A("[fd00::1]:17000"))
    with db.connect() as conn:
        rows = {str(r.address): r for r in pantries.list_pantries(conn)}
    assert rows["[fd00::1]:17000"].state == "expunged"
    assert rows["[fd00::1]:17000"].time_expunged is not None
    assert rows["[fd00::1]:17000"].stored_address == "[fd00::1]:17000"  # canonical text
    assert rows["127.0.0.1:17000"].time_expunged is None
    with db.begin() as conn:
        assert pantries.add(conn, A("[fd00::1]:17000")) == "returned_to_service"
    assert len(inv.in_service()) == 2


def test_pantry_table_row_typed_by_hand(db: Database) -> None:
    from udx.db.schema import pantry
    from udx.db.types import utcnow

    with db.begin() as conn:
        conn.execute(
            pantry.insert().values(
                address="[FD00::0002]:17000", state="in_service", time_created=utcnow()
            )
        )
    inv = DbInventory(db)
    assert inv.in_service() == [A("[fd00::2]:17000")]
    with db.begin() as conn:
        assert pantries.add(conn, A("[fd00::2]:17000")) == "already_in_service"
        assert pantries.expunge(conn, A("[fd00::2]:17000")) == "expunged"
    assert inv.in_service() == []


def test_pantry_table_unreachable_is_inventory_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from udx.db.engine import open_database

    db = open_database("postgresql+psycopg://udx@127.0.0.1:1/nothing")
    with pytest.raises(InventoryUnavailable) as info:
        DbInventory(db).in_service()
    assert info.value.exit_code == 3
    db.dispose()


# --- DNS ------------------------------------------------------------------------------


@pytest.fixture
def fake_dns() -> Iterator[FakeDns]:
    server = FakeDns().start()
    yield server
    server.stop()


def _rack(d: FakeDns) -> None:
    d.add(SRV, "SRV", f"0 0 17000 p1.host.{ZONE}.", f"0 0 17001 p2.host.{ZONE}.")
    d.add(f"p1.host.{ZONE}.", "AAAA", "fd00:1122:3344:0101:0000::0005")
    d.add(f"p2.host.{ZONE}.", "AAAA", "fd00:1122:3344:102::6")


def test_dns_srv_with_additional_records(fake_dns: FakeDns) -> None:
    _rack(fake_dns)
    inv = DnsInventory(ZONE, [fake_dns.server], timeout=1)
    assert [str(a) for a in inv.in_service()] == [
        "[fd00:1122:3344:101::5]:17000",
        "[fd00:1122:3344:102::6]:17001",
    ]
    assert fake_dns.queries == [(SRV, "SRV")]  # the additional section saved the lookups
    assert inv.is_in_service(A("[fd00:1122:3344:0101::5]:17000"))
    assert not inv.is_in_service(A("[fd00:1122:3344:101::5]:17001"))  # port matters


def test_dns_srv_targets_resolved_when_not_in_additional() -> None:
    d = FakeDns(with_additional=False).start()
    try:
        d.add(SRV, "SRV", f"0 0 17000 p1.host.{ZONE}.", f"0 0 17000 p2.host.{ZONE}.")
        d.add(f"p1.host.{ZONE}.", "AAAA", "fd00::1")
        d.add(f"p2.host.{ZONE}.", "A", "127.0.0.2")  # a lab setup on IPv4
        inv = DnsInventory(ZONE + ".", [d.server], timeout=1)
        assert [str(a) for a in inv.in_service()] == ["127.0.0.2:17000", "[fd00::1]:17000"]
        assert (f"p1.host.{ZONE}.", "AAAA") in d.queries
        assert (f"p2.host.{ZONE}.", "A") in d.queries
    finally:
        d.stop()


def test_dns_no_records_is_unavailable_not_empty(fake_dns: FakeDns) -> None:
    # An empty list would mark every record for deletion: refuse to answer.
    inv = DnsInventory("other.zone", [fake_dns.server], timeout=1)
    with pytest.raises(InventoryUnavailable, match="does not exist"):
        inv.in_service()


def test_dns_srv_without_addresses_is_unavailable(fake_dns: FakeDns) -> None:
    fake_dns.add(SRV, "SRV", f"0 0 17000 nowhere.{ZONE}.")
    with pytest.raises(InventoryUnavailable, match="no address"):
        DnsInventory(ZONE, [fake_dns.server], timeout=1).in_service()


def test_dns_one_target_without_address_fails_closed(fake_dns: FakeDns) -> None:
    # Dropping p2 would make its pantry look expunged and tear down its exports.
    fake_dns.add(SRV, "SRV", f"0 0 17000 p1.host.{ZONE}.", f"0 0 17001 gone.{ZONE}.")
    fake_dns.add(f"p1.host.{ZONE}.", "AAAA", "fd00::1")
    with pytest.raises(InventoryUnavailable, match=f"gone.{ZONE}"):
        DnsInventory(ZONE, [fake_dns.server], timeout=1).in_service()


def test_dns_server_not_answering(fake_dns: FakeDns) -> None:
    fake_dns.silent = True
    inv = DnsInventory(ZONE, [fake_dns.server], timeout=0.3)
    with pytest.raises(InventoryUnavailable) as info:
        inv.in_service()
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_dns_server_spellings(text: str, expected: tuple[str, int]) -> None:
    assert parse_dns_server(text) == expected


@pytest.mark.parametrize("bad", ["dns.example", "127.0.0.1:x", "[::1]:0"])
def test_bad_dns_server(bad: str) -> None:
    with pytest.raises(BadInput):
        DnsInventory(ZONE, [bad])


def test_bad_dns_zone() -> None:
    with pytest.raises(BadInput):
        DnsInventory("", ["127.0.0.1"])
    with pytest.raises(BadInput):
        DnsInventory("a..b", ["127.0.0.1"])


# --- from settings --------------------------------------------------------------------


def test_inventory_from_settings(db: Database, fake_dns: FakeDns) -> None:
    s = Settings()
    assert isinstance(inventory_from_settings(s, db), DbInventory)
    with pytest.raises(InventoryUnavailable):
        inventory_from_settings(s, None)
    s.pantry.source = "static"
    s.pantry.addresses = ["127.0.0.1:1"]
    inv = inventory_from_settings(s, None)
    assert isinstance(inv, StaticInventory) and inv.in_service() == [A("127.0.0.1:1")]
    s.pantry.source = "dns"
    s.pantry.dns_zone = ZONE
    s.pantry.dns_servers = [fake_dns.server]
    s.pantry.request_timeout_secs = 1
    _rack(fake_dns)
    inv = inventory_from_settings(s, None)
    assert isinstance(inv, DnsInventory) and len(inv.in_service()) == 2
