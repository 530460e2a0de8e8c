"""The planner, limits and settings on their own: pure code, no event loop, no server.

Backend: none needed. The few anyio tests here would get tests/conftest.py's
default (asyncio in real time and trio in virtual time).
"""
