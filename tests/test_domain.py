"""Plain values: states, resource types, UUIDs, pantry addresses, JSON shapes, errors."""

from __future__ import annotations

import uuid

import pytest

from udx.db.schema import user_data_export
from udx.db.urls import mask_secrets, mask_url, normalize_url
from udx.domain import errors
from udx.domain.address import PantryAddress
from udx.domain.errors import BadInput
from udx.domain.model import (
    Changeset,
    ExportState,
    ResourceRef,
    ResourceType,
    UserDataExport,
    parse_uuid,
)


def test_export_state_parse() -> None:
    assert ExportState.parse("live") is ExportState.LIVE
    assert ExportState.parse(" Deleting ") is ExportState.DELETING
    with pytest.raises(BadInput) as err:
        ExportState.parse("alive")
    assert "'alive'" in str(err.value) and "requested" in str(err.value)


def test_resource_type_parse() -> None:
    assert ResourceType.parse("SNAPSHOT") is ResourceType.SNAPSHOT
    assert ResourceType.parse("image") is ResourceType.IMAGE
    for bad in ("disk", "", "images"):
        with pytest.raises(BadInput) as err:
            ResourceType.parse(bad)
        assert "snapshot, image" in str(err.value)


def test_parse_uuid() -> None:
    u = uuid.uuid4()
    assert parse_uuid(u) is u
    assert parse_uuid(str(u).upper()) == u
    assert parse_uuid(f"  {u}\n") == u
    for bad in ("", "not-a-uuid", str(u)[:-1], str(u) + "0"):
        with pytest.raises(BadInput) as err:
            parse_uuid(bad, "export id")
        assert "malformed export id" in str(err.value)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.0.0.1:17000", "10.0.0.1:17000"),
        (" 10.0.0.1:17000 ", "10.0.0.1:17000"),
        ("[fd00::1]:17000", "[fd00::1]:17000"),
        ("[fd00:0:0:0:0:0:0:0001]:17000", "[fd00::1]:17000"),
        ("[FD00::1]:17000", "[fd00::1]:17000"),
        ("[::ffff:10.0.0.1]:17000", "10.0.0.1:17000"),
        ("10.0.0.1:065535", "10.0.0.1:65535"),
    ],
)
def test_pantry_address_spellings(text: str, canonical: str) -> None:
    addr = PantryAddress.parse(text)
    assert str(addr) == canonical
    assert addr == PantryAddress.parse(canonical)
    assert hash(addr) == hash(PantryAddress.parse(canonical))
    assert addr.base_url == f"http://{canonical}"
    assert PantryAddress.from_parts(addr.ip, addr.port) == addr


@pytest.mark.parametrize(
    "text",
    [
        "", "10.0.0.1", "10.0.0.1:", ":17000", "fd00::1:17000", "[fd00::1]17000", "[fd00::1]",
        "[10.0.0.1]:17000", "10.0.0.256:1", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1",
        "10.0.0.1:+80", "10.0.0.1:abc", "pantry.local:17000", "10.0.0.1:1 7",
        "10.0.0.1:\u0661\u0667",  # Arabic-Indic digits are not a port
    ],
)
def test_pantry_address_malformed(text: str) -> None:
    with pytest.raises(BadInput) as err:
        PantryAddress.parse(text)
    assert "pantry address" in str(err.value)


def test_pantry_address_from_parts_checks_port() -> None:
    for port in (0, 65536, True, -5):
        with pytest.raises(BadInput):
            PantryAddress.from_parts("10.0.0.1", port)
    with pytest.raises(BadInput):
        PantryAddress.from_parts("not-an-ip", 80)


def _record(**kw: object) -> UserDataExport:
    base: dict[str, object] = {
        "id": uuid.uuid4(), "state": ExportState.LIVE, "operating_saga_id": None,
        "generation": 3, "resource_id": uuid.uuid4(), "resource_type": ResourceType.IMAGE,
        "resource_deleted": False, "pantry_ip": "fd00::1", "pantry_port": 17000,
        "volume_id": uuid.uuid4(),
    }
    base.update(kw)
    return UserDataExport(**base)  # type: ignore[arg-type]


def test_record_json_has_every_column_plus_pantry_address() -> None:
    rec = _record()
    data = rec.to_json()
    assert list(data) == [c.name for c in user_data_export.c] + ["pantry_address"]
    assert data["pantry_address"] == "[fd00::1]:17000"
    assert data["state"] == "live" and data["resource_type"] == "image"
    assert data["id"] == str(rec.id) and data["volume_id"] == str(rec.volume_id)
    assert data["operating_saga_id"] is None and data["resource_deleted"] is False
    bare = _record(state=ExportState.REQUESTED, pantry_ip=None, pantry_port=None, volume_id=None,
                   operating_saga_id=uuid.UUID(int=0))
    out = bare.to_json()
    assert out["pantry_address"] is None and out["volume_id"] is None
    assert out["operating_saga_id"] == "00000000-0000-0000-0000-000000000000"


def test_changeset_json() -> None:
    ref = ResourceRef(ResourceType.SNAPSHOT, uuid.uuid4())
    rec = _record()
    cs = Changeset(request_required=[ref], delete_required=[rec], would_mark=[rec])
    assert not cs.is_empty and Changeset().is_empty
    assert Changeset(would_mark=[rec]).is_empty  # would_mark alone is nothing to do
    data = cs.to_json()
    assert data == {
        "request_required": [{"resource_type": "snapshot", "resource_id": str(ref.resource_id)}],
        "create_required": [],
        "delete_required": [rec.to_json()],
    }
    assert cs.to_json(include_would_mark=True)["would_mark_for_deletion"] == [rec.to_json()]


def test_exit_codes() -> None:
    assert errors.BadInput("x").exit_code == 2
    assert errors.ConfigError("x").exit_code == 2
    assert errors.NotFound("x").exit_code == 2
    assert errors.Conflict("x").exit_code == 1
    assert errors.DatabaseUnavailable("x").exit_code == 3
    assert errors.SchemaOutOfDate("x").exit_code == 3
    assert errors.InventoryUnavailable("x").exit_code == 3


def test_url_masking_and_normalising() -> None:
    url = "postgresql+psycopg://udx:s3cret@db.example:5432/omicron"
    assert mask_url(url) == "postgresql+psycopg://udx:***@db.example:5432/omicron"
    msg = f"cannot reach {url} (and postgres://a:b@c/d)"
    masked = mask_url(msg)
    assert "s3cret" not in masked and ":b@" not in masked
    assert mask_url("sqlite:////var/lib/udx.sqlite3") == "sqlite:////var/lib/udx.sqlite3"
    assert mask_url("postgresql://udx@db/omicron") == "postgresql://udx@db/omicron"
    assert "s3cret" not in mask_secrets("server said: password s3cret refused", url)
    assert normalize_url(" postgres://u@h/d ") == "postgresql+psycopg://u@h/d"
    assert normalize_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert normalize_url("sqlite:///x") == "sqlite:///x"


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql+psycopg://udx@db.example/omicron?password=s3cret&sslmode=require", "s3cret"),
        ("postgresql://udx:p@ss-w0rd@db.example/omicron", "p@ss-w0rd"),
        ("postgresql://udx:s3cret@db.example/omicron?sslpassword=k3yk3y", "k3yk3y"),
    ],
)
def test_passwords_in_query_strings_and_with_at_signs_are_masked(url: str, secret: str) -> None:
    from udx.db.urls import mask_secrets, mask_url

    for masked in (mask_url(url), mask_secrets(f"cannot reach {url}: refused", url)):
        assert secret not in masked and "***" in masked
        assert "db.example/omicron" in masked  # the rest stays readable


def test_parsed_addresses_are_remembered_and_errors_are_not() -> None:
    a = PantryAddress.parse("[fd00::0001]:17000")
    assert PantryAddress.parse("[fd00::0001]:17000") is a  # cached
    assert PantryAddress.from_parts("fd00::1", 17000) == a
    for _ in range(2):  # a refusal is raised every time, never remembered as a value
        with pytest.raises(BadInput, match="host name"):
            PantryAddress.parse("localhost:17000")
        with pytest.raises(BadInput, match=r"1\.\.65535"):
            PantryAddress.from_parts("10.0.0.1", 0)
