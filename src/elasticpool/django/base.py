"""``"ENGINE": "elasticpool.django"``: Django's PostgreSQL backend on an elastic pool."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql

from ..psycopg import ConnectionPool
from ._options import build_error, pool_arguments

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(postgresql.DatabaseWrapper):
    """Django's PostgreSQL :class:`~django.db.backends.postgresql.base.DatabaseWrapper`,
    pooled by :class:`elasticpool.psycopg.ConnectionPool`.

    Everything but the pool is Django's: cursors, transactions, the schema
    editor, ``dbshell``, test databases. The pool is made as Django makes its
    own, once per database alias and process, on the first connection: with
    the connection parameters Django computes from the settings, in
    autocommit, with Django's ``configure`` callback (time zone,
    ``assume_role``), and with ``check`` when ``CONN_HEALTH_CHECKS`` is set.
    It opens then, not at start-up, so workers forked before their first
    query each open their own; and a forked child forgets the pools its
    parent made (they are the parent's: unusable in the child, left to it),
    so its first query makes one of its own there too.

    As with Django's pool, ``CONN_MAX_AGE`` must be 0 (an
    :class:`~django.core.exceptions.ImproperlyConfigured` otherwise): each
    request borrows a connection on its first query and gives it back when
    the request ends (``request_finished`` → ``close_old_connections``);
    ``close_pool()`` closes the pool, and the next query makes a new one.

    ``OPTIONS["pool"]`` is ``True`` or a dict of psycopg_pool's arguments and
    elasticpool's settings; see :mod:`elasticpool.django` and
    ``docs/integrations/django.md``.

    It is not Django's pool with a different default: without
    ``OPTIONS["pool"]`` it makes a connection per request, as Django's
    backend does.
    """

    # One registry of pools for this backend, apart from the one of Django's own
    # PostgreSQL backend (a class attribute of its class, keyed by alias).
    _connection_pools: ClassVar[dict[str, Any]] = {}

    @property
    def pool(self) -> Any:
        """This alias's :class:`elasticpool.psycopg.ConnectionPool` (``None`` without a pool)."""
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            arguments = pool_arguments(self.alias, pool_options)
            connect_kwargs = self.get_connection_params()
            # Ensure we run in autocommit, Django properly sets it later on.
            connect_kwargs["autocommit"] = True
            enable_checks = self.settings_dict["CONN_HEALTH_CHECKS"]
            try:
                pool = ConnectionPool(
                    kwargs=connect_kwargs,
                    open=False,  # opened by the first connection, not at start-up
                    # Django's private hook, absent from django-stubs.
                    configure=self._configure_connection,  # type: ignore[attr-defined]
                    check=ConnectionPool.check_connection if enable_checks else None,
                    **arguments,
                )
            except (TypeError, ValueError) as exc:
                raise build_error(self.alias, exc) from None
            # As Django: threads racing here may each make a pool; none is open
            # yet, and the first one stored wins.
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]


def _forget_pools_in_child() -> None:
    """After ``os.fork()``: the parent's pools stay the parent's; the child makes its own."""
    DatabaseWrapper._connection_pools.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_pools_in_child)
