"""The engine (``Pool`` and its machinery) over the fake connector, plus fork and metrics.

Backend: tests/conftest.py's default, every ``@pytest.mark.anyio`` test on
asyncio (real time) and on trio with ``MockClock(autojump_threshold=0)``
(virtual time). Modules that need otherwise say so with an ``anyio_backend``
of their own: test_timing and test_cancellation_phases trio only (exact
times), test_hot_path asyncio only (it steps coroutines by hand), test_fork
asyncio only (a real driver).
"""
