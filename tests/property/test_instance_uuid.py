"""Only the issuing instance's uuid opens a console; checks never change data."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from console_auth.application import ServicePolicy
from console_auth.domain import ConsoleType, InstanceMismatch, InvalidRequest, InvalidToken
from tests.backends import ROUTED_BY_INSTANCE, Backend
from tests.property.strategies import malformed_uuid_texts, mixed_case, non_text_uuids
from tests.property.support import harness


@given(
    instance=st.uuids(),
    other=st.uuids(),
    mask=st.integers(0, 2**36 - 1),
    require_uuid=st.booleans(),
    malformed=malformed_uuid_texts | non_text_uuids,
)
@example(
    instance=uuid.UUID(int=1),
    other=uuid.UUID(int=2),
    mask=2**36 - 1,
    require_uuid=True,
    malformed=str(uuid.UUID(int=1)).replace("-", ""),
)
def test_only_the_issuing_instance_passes(
    backend: Backend,
    instance: uuid.UUID,
    other: uuid.UUID,
    mask: int,
    require_uuid: bool,
    malformed: Any,
) -> None:
    assume(other != instance)
    with harness(backend, policy=ServicePolicy(require_instance_uuid=require_uuid)) as h:
        h.authorize(other, "compute-2", 5901, ConsoleType.SERIAL)  # a bystander
        issued = h.authorize(instance, "compute-1", 5900, ConsoleType.NOVNC)
        token = issued.token.get_secret_value()

        for right in (instance, str(instance), str(instance).upper(), mixed_case(instance, mask)):
            assert h.service.validate(token, right) == issued.connection
            assert h.service.validate(token.encode("ascii"), right) == issued.connection
        # Routed by instance, the lookup asks the other instance's cell: unknown there.
        refused = (
            (InstanceMismatch, InvalidToken)
            if backend.name in ROUTED_BY_INSTANCE
            else InstanceMismatch
        )
        for wrong in (other, str(other), str(other).upper(), mixed_case(other, mask)):
            with pytest.raises(refused):
                h.service.validate(token, wrong)
        if require_uuid:
            with pytest.raises(InstanceMismatch):
                h.service.validate(token)
        else:
            assert h.service.validate(token) == issued.connection
        with pytest.raises(InvalidRequest):
            h.service.validate(token, malformed)
        with pytest.raises(InvalidRequest):
            h.service.revoke_instance(malformed)

        h.assert_store_is_exactly_issued()
