"""Security: no secrets in output, no session state across borrowers, no SQL from input, TLS.

Backend: asyncio only (every test drives asyncpg or psycopg against a real server).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the real drivers run on asyncio."""
    return "asyncio"
