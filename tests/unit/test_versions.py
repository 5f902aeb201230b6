"""Versioned primitives: the history table, backports and the schema pin."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from console_auth.domain import ConsoleConnection, InvalidRequest, UnsupportedVersion, versions
from tests.builders import a_connection
from tests.chains import assert_chain_holds_no
from tests.fakes import T0

# One fingerprint per version this library ever wrote. A change to the fields
# without a new row in versions.HISTORY fails here: bump the version, write its
# backport, then add the new fingerprint. Never edit an existing line.
FINGERPRINTS = {
    "1.1": "0654e7c7d6f1ea096b9f89c3bf1cc02f2233d0999eb9698af6f887f08c22c0f9",
    "1.2": "d8e88dcb5f18442092ad3c107b418d6817226269e0d4b7077dc4159404d3dc65",
}
_SHAPE_KEYS = {"type", "properties", "required", "enum", "anyOf", "items", "format"}
_SHAPE_KEYS |= {"additionalProperties", "$ref", "$defs", "maximum", "minimum"}


def _shape(schema: Any) -> Any:
    """The parts of a JSON schema that describe data, not prose, so the pin
    does not move when pydantic rewords a title."""
    if isinstance(schema, list):
        return [_shape(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    shape = {}
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            shape[key] = {name: _shape(sub) for name, sub in value.items()}
        elif key in _SHAPE_KEYS:
            shape[key] = _shape(value)
    return shape


def fingerprint() -> str:
    schema = json.dumps(_shape(ConsoleConnection.model_json_schema()), sort_keys=True)
    return hashlib.sha256(schema.encode()).hexdigest()


def test_current_fields_match_the_pinned_fingerprint() -> None:
    current = f"{versions.CURRENT[0]}.{versions.CURRENT[1]}"
    assert fingerprint() == FINGERPRINTS[current]


def test_every_written_version_has_a_fingerprint() -> None:
    assert {f"{a}.{b}" for a, b in (s.version for s in versions.HISTORY)} >= set(FINGERPRINTS)
    assert f"{versions.CURRENT[0]}.{versions.CURRENT[1]}" in FINGERPRINTS


def test_envelope_names_the_object_and_version() -> None:
    primitive = a_connection(issued_at=T0).to_primitive()
    assert primitive["console_auth.name"] == "ConsoleConnection"
    assert primitive["console_auth.version"] == "1.2"
    assert primitive["console_auth.data"]["issued_at"] == "2026-01-01T12:00:00Z"


def test_backport_to_1_0_drops_issued_at_and_reads_back() -> None:
    connection = a_connection(issued_at=T0)
    old = connection.to_primitive("1.0")
    assert old["console_auth.version"] == "1.0"
    assert "issued_at" not in old["console_auth.data"]
    assert ConsoleConnection.from_primitive(old) == connection.model_copy(
        update={"issued_at": None}
    )


def test_target_version_accepts_a_tuple() -> None:
    assert a_connection().to_primitive((1, 0))["console_auth.version"] == "1.0"


@pytest.mark.parametrize("target", ["0.9", "1.3", "2.0", "1", "one.two", "1.0.0", "\u0661.\u0660"])
def test_unknown_target_versions_are_refused(target: str) -> None:
    with pytest.raises(UnsupportedVersion):
        a_connection().to_primitive(target)


def test_newer_minor_is_read_without_its_new_fields() -> None:
    connection = a_connection(issued_at=T0)
    primitive = connection.to_primitive()
    primitive["console_auth.version"] = "1.7"
    primitive["console_auth.data"]["shared_with"] = ["someone"]
    assert ConsoleConnection.from_primitive(primitive) == connection


def test_newer_major_is_a_clear_error() -> None:
    primitive = a_connection().to_primitive()
    primitive["console_auth.version"] = "2.0"
    with pytest.raises(UnsupportedVersion, match=r"2\.0"):
        ConsoleConnection.from_primitive(primitive)


@pytest.mark.parametrize(
    "primitive",
    [
        {},
        {"console_auth.name": "Instance", "console_auth.version": "1.0"},
        {"console_auth.name": "ConsoleConnection", "console_auth.version": "1.0"},
        {
            "console_auth.name": "ConsoleConnection",
            "console_auth.version": "1.0",
            "console_auth.data": {"port": "many"},
        },
    ],
)
def test_malformed_primitives_are_bad_requests(primitive: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        ConsoleConnection.from_primitive(primitive)


@pytest.mark.parametrize(
    "version",
    [
        (10**100, 0),
        (1, 10**5000),
        (-1, 1),
        10**5000,
        "1" * 5000 + ".0",
        "1." + "9" * 10**6,
        1.1,
        [1, 1],
        (True, 1),
        None,
        b"1.1",
    ],
    ids=lambda version: type(version).__name__,  # str() of a huge int raises
)
def test_a_huge_or_odd_version_is_unsupported_and_not_echoed(version: object) -> None:
    primitive = a_connection().to_primitive()
    with pytest.raises(UnsupportedVersion, match=r"not of the form X\.Y") as caught:
        ConsoleConnection.from_primitive({**primitive, versions.VERSION_KEY: version})
    assert "111111" not in str(caught.value)
    if version is not None:  # to_primitive(None) writes the current version
        with pytest.raises(UnsupportedVersion):
            a_connection().to_primitive(version)  # type: ignore[arg-type]


def test_a_refused_primitive_chain_holds_no_input() -> None:
    primitive = a_connection().to_primitive()
    secret = "S3cr3t" * 8
    data = {**primitive[versions.DATA_KEY], "host": secret + "!", "port": secret}
    with pytest.raises(InvalidRequest) as caught:
        ConsoleConnection.from_primitive({**primitive, versions.DATA_KEY: data})
    assert caught.value.__context__ is None
    assert_chain_holds_no(caught.value, secret)
