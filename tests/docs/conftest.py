"""The documentation's code: snippets run as written.

Backend: asyncio only (the snippets use asyncpg and psycopg against a real server).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the snippets use the real drivers, which run on asyncio."""
    return "asyncio"
