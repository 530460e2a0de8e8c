"""The ``elasticpool`` command (``elasticpool.cli``).

Backend: asyncio only (the command runs asyncpg on asyncio).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the command runs asyncpg on asyncio."""
    return "asyncio"
