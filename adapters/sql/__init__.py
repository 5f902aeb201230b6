"""The SQL adapter: SQLAlchemy 2 Core on pooled connections, schema by Alembic.

Importing it connects to nothing and imports no Alembic.
"""

from .engine import SQLITE_PRAGMAS, open_engine
from .migrate import HEAD, current_revision, downgrade, guard_schema, upgrade, upgrade_script
from .ports import SqlPortLeaseRepository, SqlPortReservationRepository
from .repository import SqlConsoleConnectionRepository
from .statements import Statements

__all__ = [
    "HEAD",
    "SQLITE_PRAGMAS",
    "SqlConsoleConnectionRepository",
    "SqlPortLeaseRepository",
    "SqlPortReservationRepository",
    "Statements",
    "current_revision",
    "downgrade",
    "guard_schema",
    "open_engine",
    "upgrade",
    "upgrade_script",
]
