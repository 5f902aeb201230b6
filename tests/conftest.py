"""Shared test set-up: hypothesis profiles and the backends under test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, settings

from console_auth.application import ConsoleConnectionRepository
from tests.backends import (
    BACKEND_NAMES,
    PORT_BACKEND_NAMES,
    SINGLE_STORE_NAMES,
    Backend,
    PortBackend,
    SingleStore,
    opened,
)
from tests.console_drivers import (
    DRIVER_NAMES,
    Driver,
    LibvirtTestDriver,
    MemoryDriver,
    StaticDriver,
)

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(  # HYPOTHESIS_PROFILE=nightly: twenty times ci, fresh seeds each run
    "nightly",
    max_examples=4000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(scope="session", params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each backend, opened once per session."""
    with opened(request.param) as each:
        yield each


@pytest.fixture
def repository(backend: Backend) -> Iterator[ConsoleConnectionRepository]:
    """An empty repository of each backend."""
    with backend.fresh() as repo:
        yield repo


@pytest.fixture(scope="session", params=SINGLE_STORE_NAMES)
def single_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each backend whose repository is one store, opened once per session."""
    with opened(request.param) as each:
        yield each


@pytest.fixture
def single_store(single_backend: Backend) -> Iterator[SingleStore]:
    """An empty single store of each such backend."""
    with single_backend.fresh() as repo:
        yield cast(SingleStore, repo)


@pytest.fixture(scope="session", params=PORT_BACKEND_NAMES)
def port_backend(request: pytest.FixtureRequest) -> Iterator[PortBackend]:
    """Each backend whose adapters store serial-port leases."""
    with opened(request.param) as each:
        yield cast(PortBackend, each)


@pytest.fixture(scope="session")
def libvirt_test_driver() -> Iterator[LibvirtTestDriver]:
    """libvirt's ``test:///default``, one connection held for the session
    (its state is reset when the last one closes)."""
    driver = LibvirtTestDriver()
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture(params=DRIVER_NAMES)
def console_driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    """Each ``ConsoleEndpoints`` adapter, able to give an instance consoles."""
    if request.param == "libvirt":
        yield request.getfixturevalue("libvirt_test_driver")
    elif request.param == "static":
        yield StaticDriver(tmp_path / "consoles.toml")
    else:
        yield MemoryDriver()
