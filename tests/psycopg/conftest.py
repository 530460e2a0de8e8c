"""``elasticpool.psycopg`` (connector, the psycopg_pool face) against a real PostgreSQL.

Backend: asyncio only (psycopg's async connections are tested on asyncio).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: psycopg's async connections are tested on asyncio."""
    return "asyncio"
