"""Primitives: every connection survives the trip, older and newer readers
get what the version rules promise, garbage gets a ConsoleAuthError."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from console_auth.domain import (
    ConsoleConnection,
    ConsoleOptions,
    ConsoleType,
    InvalidRequest,
    UnsupportedVersion,
    hash_token,
)
from tests.fakes import T0
from tests.property.strategies import connections, fixed_offsets, json_object_with, json_values

NAME_KEY: Final = "console_auth.name"
VERSION_KEY: Final = "console_auth.version"
DATA_KEY: Final = "console_auth.data"
FIELDS: Final = frozenset(ConsoleConnection.model_fields)
WRITTEN: Final = {(1, 0), (1, 1), (1, 2)}
SAMPLE: Final = ConsoleConnection(
    instance_uuid=UUID("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
    host="compute-1",
    port=5900,
    console_type=ConsoleType.NOVNC,
    options=ConsoleOptions(extra={"cell": "cell1"}),
    access_url_base="https://console.example.org/vnc_auto.html",
    token_hash=hash_token("T" * 43),
    expires_at=T0 + timedelta(minutes=10),
    issued_at=T0,
)

unknown_field_names: Final = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True).filter(
    lambda name: name not in FIELDS
)


def _via_json(primitive: dict[str, Any]) -> Any:
    return json.loads(json.dumps(primitive, allow_nan=False))


def _with_data(primitive: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**primitive, DATA_KEY: {**primitive[DATA_KEY], **changes}}


@given(connection=connections())
def test_primitive_round_trips_directly_and_through_json(connection: ConsoleConnection) -> None:
    primitive = connection.to_primitive()
    assert primitive[NAME_KEY] == "ConsoleConnection"
    assert primitive[VERSION_KEY] == "1.2"
    assert ConsoleConnection.from_primitive(primitive) == connection
    assert ConsoleConnection.from_primitive(_via_json(primitive)) == connection
    assert connection.to_primitive("1.2") == primitive
    assert connection.to_primitive((1, 2)) == primitive


@given(connection=connections())
def test_written_for_1_1_drops_the_mac(connection: ConsoleConnection) -> None:
    primitive = connection.to_primitive("1.1")
    assert primitive[VERSION_KEY] == "1.1"
    assert set(primitive[DATA_KEY]) == FIELDS - {"mac"}
    expected = connection.model_copy(update={"mac": None})
    assert ConsoleConnection.from_primitive(_via_json(primitive)) == expected


@given(connection=connections())
def test_written_for_1_0_drops_issued_at(connection: ConsoleConnection) -> None:
    primitive = connection.to_primitive("1.0")
    assert primitive[VERSION_KEY] == "1.0"
    assert set(primitive[DATA_KEY]) == FIELDS - {"issued_at", "mac"}
    assert connection.to_primitive((1, 0)) == primitive
    expected = connection.model_copy(update={"issued_at": None, "mac": None})
    assert ConsoleConnection.from_primitive(_via_json(primitive)) == expected


@given(
    connection=connections(),
    minor=st.integers(3, 9999),
    unknown=json_object_with(unknown_field_names),
)
@example(connection=SAMPLE, minor=99, unknown={"cell_name": "cell1"})
def test_newer_minor_is_read_without_its_unknown_fields(
    connection: ConsoleConnection, minor: int, unknown: dict[str, Any]
) -> None:
    primitive = _with_data(connection.to_primitive(), **unknown)
    primitive[VERSION_KEY] = f"1.{minor}"
    assert ConsoleConnection.from_primitive(_via_json(primitive)) == connection


@given(
    connection=connections(),
    major=st.integers(2, 10**6) | st.just(0),
    minor=st.integers(0, 10**6),
)
@example(connection=SAMPLE, major=2, minor=0)
def test_other_major_is_unsupported(connection: ConsoleConnection, major: int, minor: int) -> None:
    primitive = {**connection.to_primitive(), VERSION_KEY: f"{major}.{minor}"}
    with pytest.raises(UnsupportedVersion):
        ConsoleConnection.from_primitive(primitive)
    with pytest.raises(UnsupportedVersion):
        connection.to_primitive(f"{major}.{minor}")


@given(
    connection=connections(),
    target=st.text(max_size=12) | st.from_regex(r"\d{1,3}\.\d{1,3}", fullmatch=True),
)
@example(connection=SAMPLE, target="1.3")
@example(connection=SAMPLE, target="1")
@example(connection=SAMPLE, target="1.1.0")
def test_only_written_versions_can_be_targeted(connection: ConsoleConnection, target: str) -> None:
    shape = re.fullmatch(r"([0-9]+)\.([0-9]+)", target)
    if shape is not None and (int(shape[1]), int(shape[2])) in WRITTEN:
        assert connection.to_primitive(target)[VERSION_KEY] == f"{int(shape[1])}.{int(shape[2])}"
        return
    with pytest.raises(UnsupportedVersion):
        connection.to_primitive(target)


@given(garbage=json_values)
@example(garbage={NAME_KEY: "ConsoleConnection", VERSION_KEY: "1.1"})
@example(garbage={NAME_KEY: "ConsoleConnection", VERSION_KEY: "1.1", DATA_KEY: []})
@example(garbage={NAME_KEY: "ConsoleConnection", VERSION_KEY: 1.1, DATA_KEY: {}})
@example(garbage={NAME_KEY: "ConsoleConnection", VERSION_KEY: [1, 1], DATA_KEY: {}})
def test_garbage_is_refused_with_a_console_auth_error(garbage: Any) -> None:
    with pytest.raises((InvalidRequest, UnsupportedVersion)):
        ConsoleConnection.from_primitive(garbage)


garbage_field_values: Final = st.one_of(
    json_values,
    st.datetimes(timezones=fixed_offsets).map(lambda d: d.isoformat()),  # whole calendar
    st.sampled_from(["", "nan", "1e400", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00"]),
)


@given(
    connection=connections(),
    field=st.sampled_from(sorted(FIELDS)),
    value=garbage_field_values,
    drop=st.booleans(),
)
def test_a_damaged_field_is_read_or_refused(
    connection: ConsoleConnection, field: str, value: Any, drop: bool
) -> None:
    primitive = connection.to_primitive()
    if drop:
        del primitive[DATA_KEY][field]
    else:
        primitive[DATA_KEY][field] = value
    try:
        read = ConsoleConnection.from_primitive(_via_json(primitive))
    except InvalidRequest:
        return  # the envelope is intact, so no other ConsoleAuthError is right
    assert ConsoleConnection.from_primitive(read.to_primitive()) == read


@given(
    connection=connections(),
    key=st.sampled_from([NAME_KEY, VERSION_KEY, DATA_KEY]),
    value=json_values,
    drop=st.booleans(),
)
def test_a_damaged_envelope_is_refused(
    connection: ConsoleConnection, key: str, value: Any, drop: bool
) -> None:
    primitive = connection.to_primitive()
    if drop:
        del primitive[key]
    else:
        primitive[key] = value
    try:
        read = ConsoleConnection.from_primitive(primitive)
    except (InvalidRequest, UnsupportedVersion):
        return
    assert read == connection  # only an equivalent envelope may be read


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"]
)  # valid ISO dates whose UTC value leaves the calendar (OverflowError once)
@pytest.mark.parametrize("field", ["expires_at", "issued_at"])
def test_out_of_range_dates_are_invalid_requests(field: str, when: str) -> None:
    primitive = _with_data(SAMPLE.to_primitive(), **{field: when})
    with pytest.raises(InvalidRequest):
        ConsoleConnection.from_primitive(primitive)


@pytest.mark.parametrize("version", ["1." + "9" * 5000, "9" * 5000 + ".0"])
def test_absurd_versions_are_unsupported(version: str) -> None:
    """int() refuses over 4300 digits with ValueError; that must not leak."""
    primitive = {**SAMPLE.to_primitive(), VERSION_KEY: version}
    with pytest.raises(UnsupportedVersion):
        ConsoleConnection.from_primitive(primitive)
    with pytest.raises(UnsupportedVersion):
        SAMPLE.to_primitive(version)
