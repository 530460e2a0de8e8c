"""``elasticpool.replicas`` (``RoutingPool``): on fake pools, and on a real primary and standby.

Backend: tests/conftest.py's default (asyncio and trio in virtual time); the
tests against real servers ask for asyncio only, one by one.
"""
