"""``elasticpool.asyncpg`` (connector, reset, the ``asyncpg.Pool`` face) against a real PostgreSQL.

Backend: asyncio only (asyncpg runs on asyncio only).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: asyncpg runs on asyncio only."""
    return "asyncio"
