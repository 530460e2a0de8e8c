"""Failure: the fault proxy, the fault suite, the cancellation storm and the soak.

Backend: it differs by module, so each says: test_faultproxy runs asyncio and
trio in real time (sockets), test_faults and test_soak asyncio only (real
drivers), test_cancel_storm the default of tests/conftest.py plus asyncio-only
cases for the real drivers.
"""
