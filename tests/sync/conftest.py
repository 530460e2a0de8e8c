"""The thread-safe synchronous shell, over real threads and a real server.

Backend: asyncio only, for any async helper a test here needs (the drivers run on asyncio).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the drivers run on asyncio."""
    return "asyncio"
