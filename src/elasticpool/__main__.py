"""``python -m elasticpool``: the ``elasticpool`` command (see :mod:`elasticpool.cli`)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
