"""Integrations against a real server: examples, benchmarks' smoke runs, embedded, wrap, ORMs.

Backend: asyncio only (asyncpg, psycopg_pool, SQLAlchemy and Django run on asyncio).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the real drivers and the libraries over them run on asyncio."""
    return "asyncio"
