"""Every public entry point of the library, fed hostile values: wrong types,
huge integers, huge and odd strings, bytes, nested structures, and clocks
that return naive or absurd times. Nothing but a ``ConsoleAuthError``
escapes, and no refusal carries a token anywhere in its chain.

The settings and the CLI have their own fuzz test (``test_cli_fuzz.py``).
Run with ``HYPOTHESIS_PROFILE=nightly`` for the larger run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, cast

from hypothesis import given
from hypothesis import strategies as st

from console_auth.adapters.memory import (
    InMemoryConsoleConnectionRepository,
    InMemoryPortLeaseRepository,
    InMemoryPortReservationRepository,
)
from console_auth.application import ConsoleAuthService, ConsolePortService
from console_auth.domain import (
    ConsoleAuthError,
    ConsoleConnection,
    ConsoleType,
    PortLease,
    build_access_url,
    check_token,
    parse_access_url,
    versions,
)
from tests.chains import assert_chain_holds_no
from tests.fakes import T0, FakeClock, FixedLeaseIdSource, FixedTokenSource
from tests.property.strategies import any_base_urls, json_values

INSTANCE: Final = uuid.UUID("1e2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b")
TOKENS: Final = FixedTokenSource("t_k")  # "_": no token is also a valid hostname or key


class _Deep(list[Any]):
    """Lists nested ``levels`` deep, with a short repr (hypothesis prints it)."""

    def __init__(self, levels: int) -> None:
        nested: list[Any] = []
        for _ in range(levels - 1):
            nested = [nested]
        super().__init__([nested])
        self.levels = levels

    def __repr__(self) -> str:
        return f"<lists {self.levels} deep>"


_HUGE: Final = (
    "a" * 1_000_000,
    "/?token=" + "A" * 43 + "&x=" + "&a=1" * 50_000,
    "\\" * 5000,
    "1" * 5000 + ".0",
    "%" * 10_000,
    "https://p.example/?" + "path=%3F" * 2000,
    "\ud800" * 100,  # lone surrogates: no encoding takes them
)
hostile: Final[st.SearchStrategy[object]] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**100, 10**5000, -(10**5000)]),
    st.floats(),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.sampled_from(_HUGE),
    st.uuids(),
    st.datetimes(),  # naive
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-12))])),
    st.timedeltas(),
    st.dates(),
    st.lists(st.integers(), max_size=4),
    st.tuples(st.integers(), st.integers()),
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3),
    st.sampled_from([object(), range(1, 10**20), range(0), frozenset({1}), _Deep(10_000)]),
    json_values,
)
clock_times: Final[st.SearchStrategy[object]] = st.one_of(
    st.just(T0),
    st.sampled_from([datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)]),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=14))])),
    st.datetimes(),  # naive, as oslo_utils.timeutils.utcnow() returns
    hostile,
)


def arg(*good: object) -> st.SearchStrategy[object]:
    """Mostly values an entry point takes, so calls reach deep, or anything."""
    return st.one_of(st.sampled_from(good), hostile)


class World:
    """A service and a port service on the memory adapters, with a token of
    each kind issued on a sane clock before the clock is set to ``now``."""

    def __init__(self, now: object) -> None:
        self.clock = FakeClock(T0)
        self.service = ConsoleAuthService(
            InMemoryConsoleConnectionRepository(), self.clock, TOKENS
        )
        self.ports = ConsolePortService(
            self.service,
            InMemoryPortLeaseRepository(),
            InMemoryPortReservationRepository(),
            FixedLeaseIdSource(),
        )
        self.novnc = self.service.authorize(
            INSTANCE, "compute-1", 5900, "novnc", access_url_base="https://p.example/vnc.html"
        )
        self.serial = self.ports.authorize_serial(INSTANCE, "compute-1", [10000, 10001])
        self.lease: PortLease | None = self.ports.connect(self.token(self.serial), INSTANCE, "p")
        self.clock.set(cast(datetime, now))

    @staticmethod
    def token(issued: Any) -> str:
        return cast(str, issued.token.get_secret_value())

    def secrets(self) -> list[str]:
        return [self.token(self.novnc), self.token(self.serial)]


Call = Callable[[World], object]


def _calls() -> st.SearchStrategy[Call]:
    uuids = arg(INSTANCE, str(INSTANCE), str(INSTANCE).upper(), uuid.uuid4())
    hosts = arg("compute-1", "::1", "10.0.0.1")
    token_like = arg("t_k" + "0" * 39 + "1", b"t_k" + b"0" * 39 + b"2", "A" * 43)
    bases = st.one_of(any_base_urls, hostile)
    ttls = arg(None, timedelta(seconds=30), timedelta(days=30))
    options = arg(None, {"extra": {"k": 1}}, {"use_tls": True, "tls_port": 5901})
    authorize = st.builds(
        lambda i, h, p, c, o, b, t: (
            lambda w: w.service.authorize(i, h, p, c, options=o, access_url_base=b, ttl=t)
        ),
        uuids,
        hosts,
        arg(5900, 1, 65535),
        arg(*ConsoleType, "novnc"),
        options,
        bases,
        ttls,
    )
    validate = st.builds(
        lambda t, i: lambda w: w.service.validate(t, i), token_like, uuids | st.none()
    )
    validate_issued = st.builds(
        lambda i: lambda w: w.service.validate(w.token(w.novnc), i), uuids | st.none()
    )
    validate_url = st.builds(lambda u: lambda w: w.service.validate_url(u), arg("/?token=x"))
    validate_issued_url = st.just(lambda w: w.service.validate_url(w.novnc.access_url))
    revoke = st.builds(lambda i: lambda w: w.service.revoke_instance(i), uuids)
    purge = st.builds(lambda h: lambda w: w.service.purge_expired(h), hosts | st.none())
    authorize_serial = st.builds(
        lambda i, h, d, o, t: lambda w: w.ports.authorize_serial(i, h, d, options=o, ttl=t),
        uuids,
        hosts,
        arg([10000], [10002, 10003], (10004,), range(10005, 10007)),
        options,
        ttls,
    )
    connect = st.builds(
        lambda t, i, p: lambda w: w.ports.connect(w.token(w.serial) if t is None else t, i, p),
        token_like | st.none(),
        uuids | st.none(),
        arg("proxy-a", "p" * 255),
    )
    heartbeat = st.builds(
        lambda x, own: lambda w: w.ports.heartbeat(w.lease if own else x), hostile, st.booleans()
    )
    disconnect = st.builds(
        lambda x, own: lambda w: w.ports.disconnect(w.lease if own else x), hostile, st.booleans()
    )
    allocate = st.builds(
        lambda h, r: lambda w: w.ports.allocate_port(h, r),
        hosts,
        arg(range(20000, 20003), (20000, 20002), [20000, 20000]),
    )
    release = st.builds(
        lambda h, p: lambda w: w.ports.release_port(h, p), hosts, arg(20000, 65535)
    )
    leases = st.builds(
        lambda h, i: lambda w: w.ports.leases(host=h, instance_uuid=i),
        hosts | st.none(),
        uuids | st.none(),
    )
    release_instance = st.builds(lambda i: lambda w: w.ports.release_instance(i), uuids)
    return st.one_of(
        authorize,
        validate,
        validate_issued,
        validate_url,
        validate_issued_url,
        revoke,
        purge,
        authorize_serial,
        connect,
        heartbeat,
        disconnect,
        allocate,
        release,
        leases,
        release_instance,
    )


def _refused_only_typed(world: World, call: Call) -> None:
    try:
        call(world)
    except ConsoleAuthError as exc:
        assert_chain_holds_no(exc, *world.secrets())


@given(now=clock_times, calls=st.lists(_calls(), min_size=1, max_size=6))
def test_services_raise_nothing_but_console_auth_errors(now: object, calls: list[Call]) -> None:
    world = World(now)
    for call in calls:
        _refused_only_typed(world, call)


# --- the domain's functions and primitives ---------------------------------------

_PRIMITIVE_KEYS: Final = (versions.NAME_KEY, versions.VERSION_KEY, versions.DATA_KEY)
_DATA_KEYS: Final = (*ConsoleConnection.model_fields, "options.extra", "options.tls_port")


@st.composite
def primitives(draw: st.DrawFn) -> object:
    """A good envelope with one or more of its parts replaced by anything."""
    world_primitive = _GOOD.to_primitive(draw(st.sampled_from(["1.0", "1.1"])))
    data = dict(world_primitive[versions.DATA_KEY])
    options = dict(data["options"])
    for key in draw(st.lists(st.sampled_from(_DATA_KEYS), max_size=3)):
        if key.startswith("options."):
            options[key.removeprefix("options.")] = draw(hostile)
        else:
            data[key] = draw(hostile)
    data["options"] = draw(st.just(options) | hostile)
    primitive: dict[str, object] = {**world_primitive, versions.DATA_KEY: data}
    for key in draw(st.lists(st.sampled_from(_PRIMITIVE_KEYS), max_size=2)):
        primitive[key] = draw(hostile)
    return draw(st.just(primitive) | hostile)


_GOOD: Final = ConsoleConnection.build(
    instance_uuid=INSTANCE,
    host="compute-1",
    port=5900,
    console_type="novnc",
    token_hash="0" * 64,
    expires_at=T0,
)
SECRET: Final = "t_k" + "9" * 40


@given(
    primitive=primitives(),
    target=arg("1.0", "1.1", (1, 1), None),
    token=arg(SECRET, SECRET.encode()),
    url=arg(f"/?token={SECRET}", f"/?path=%3Ftoken%3D{SECRET}"),
    base=st.one_of(any_base_urls, hostile),
    instance=arg(INSTANCE),
    nested=st.booleans(),
)
def test_domain_functions_raise_nothing_but_console_auth_errors(
    primitive: object,
    target: object,
    token: object,
    url: object,
    base: object,
    instance: object,
    nested: bool,
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: ConsoleConnection.from_primitive(primitive),  # type: ignore[arg-type]
        lambda: _GOOD.to_primitive(target),  # type: ignore[arg-type]
        lambda: check_token(token),
        lambda: parse_access_url(url),  # type: ignore[arg-type]
        lambda: build_access_url(
            base,  # type: ignore[arg-type]
            token,  # type: ignore[arg-type]
            instance,  # type: ignore[arg-type]
            nested_in_path=nested,
        ),
    ]
    for call in calls:
        try:
            call()
        except ConsoleAuthError as exc:
            assert_chain_holds_no(exc, SECRET)
