"""Where :class:`FaultProxy` used to live; it is :class:`elasticpool.testing.FaultProxy` now.

Kept because ``tests/faults/test_faultproxy.py`` imports it from here.
"""

from .testing._faultproxy import FaultProxy

__all__ = ["FaultProxy"]
