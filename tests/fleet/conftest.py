"""``elasticpool.fleet``: budgets without a database, the division rule, and real fleets.

Backend: tests/conftest.py's default (asyncio and trio in virtual time) for the
database-free tests; test_fleet_postgres sets asyncio only (asyncpg).
fleet_member.py is the OS-process member test_fleet_postgres starts.
"""
