"""Small builders for valid domain objects, so tests state only what matters."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from console_auth.domain import ConsoleConnection, ConsoleType, hash_token
from tests.fakes import T0


def a_connection(
    *,
    token: str | None = None,
    instance_uuid: uuid.UUID | None = None,
    host: str = "compute-1",
    expires_at: datetime = T0 + timedelta(minutes=10),
    **fields: Any,
) -> ConsoleConnection:
    """A valid connection; unique token hash unless ``token`` is given."""
    return ConsoleConnection(
        instance_uuid=instance_uuid or uuid.uuid4(),
        host=host,
        port=fields.pop("port", 5900),
        console_type=fields.pop("console_type", ConsoleType.NOVNC),
        token_hash=hash_token(token or uuid.uuid4().hex),
        expires_at=expires_at,
        **fields,
    )
