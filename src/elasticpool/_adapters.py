"""The driver adapters, asked about objects the core did not make.

The core never imports a driver, and never guesses one from a module name or
from the methods an object happens to have. When it is handed an object that
no connector of its own made (a pool given to :func:`~elasticpool.wrap`, a bare
connection given to :func:`~elasticpool.replicas.replay_lag` or to
:meth:`~elasticpool.PostgresMembership.read_fleets`), it asks each adapter
package whose driver is installed, in the order of :data:`ADAPTERS`, whether
the object is its own (:func:`ask`). An adapter whose driver is missing is
skipped: the object cannot be one of that driver's.

What an adapter answers, module by module (each question returns ``None``
for an object that is not its driver's):

* ``<adapter>._leases.leases_for(existing)``: the leases :func:`~elasticpool.wrap`
  builds a pool on (raising :class:`ValueError` for a pool that cannot be
  wrapped as it is, such as a closed one);
* ``<adapter>._connector.fetch_for(conn)``: a ``fetch(conn, sql, *args)`` for one
  of its connections (see :meth:`Connector.fetch <elasticpool.Connector>`).
* ``<adapter>._ops.async_ops_for(conn)`` and ``sync_ops_for(conn)``: what the
  core may do with one of its connections that a SQLAlchemy dialect opened
  (close it from any thread, check it, give it up after a fork, run
  statements: :mod:`elasticpool._driver`);
* ``<adapter>._ops.is_disconnect_for(exc)``: whether one of its driver's
  exceptions means a dead connection (``True`` or ``False``);
* ``<adapter>._ops.server_settings_hook(driver_name)``: how the driver a
  SQLAlchemy dialect names (its ``driver``) takes server settings at connect.

A new adapter adds its package here; a new kind of pool for ``wrap()`` is one
more case in its adapter's ``leases_for``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._connector import Fetch

__all__ = ["ADAPTERS", "ASYNCPG", "PSYCOPG", "Adapter", "ask", "fetch_for", "load"]


@dataclasses.dataclass(frozen=True, slots=True)
class Adapter:
    """An adapter package and the distributions it needs."""

    package: str
    """The adapter's package, e.g. ``elasticpool.asyncpg``."""
    extra: str
    """The extra that installs its driver (``pip install 'elasticpool[<extra>]'``)."""
    needs: tuple[str, ...]
    """Top-level modules of its driver: failing to import one means it is not installed."""


ASYNCPG = Adapter("elasticpool.asyncpg", "asyncpg", ("asyncpg",))
PSYCOPG = Adapter("elasticpool.psycopg", "psycopg", ("psycopg", "psycopg_pool"))

ADAPTERS: tuple[Adapter, ...] = (ASYNCPG, PSYCOPG)
"""Every adapter, in the order they are asked."""

_missing: set[str] = set()  # adapter modules whose driver is not installed (asked once)


def load(adapter: Adapter, module: str = "") -> ModuleType | None:
    """``adapter``'s package (or its submodule ``module``), or ``None`` if its driver is missing.

    An :class:`ImportError` of anything else (the adapter's own code) is raised.
    """
    name = f"{adapter.package}.{module}" if module else adapter.package
    if name in _missing:
        return None
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        # None: the driver raised it without naming a module (psycopg without libpq)
        if exc.name is not None and exc.name.partition(".")[0] not in adapter.needs:
            raise
        _missing.add(name)
        return None


def _loaded(module: str) -> Iterator[ModuleType]:
    for adapter in ADAPTERS:
        found = load(adapter, module)
        if found is not None:
            yield found


def ask(module: str, question: str, obj: object) -> Any:
    """The first answer but ``None`` to ``<adapter>.<module>.<question>(obj)``, or ``None``."""
    for found in _loaded(module):
        answer = getattr(found, question)(obj)
        if answer is not None:
            return answer
    return None


def fetch_for(conn: object, needed_by: str) -> Fetch:
    """The ``fetch`` of the adapter whose driver made ``conn``; else a :class:`TypeError`.

    For a bare connection, with no connector at hand. ``needed_by`` names the
    call in the error, which says how to pass a connector instead.
    """
    fetch: Fetch | None = ask("_connector", "fetch_for", conn)
    if fetch is None:
        kind = type(conn)
        raise TypeError(
            f"{needed_by} takes an asyncpg or psycopg connection (got "
            f"{kind.__module__}.{kind.__qualname__}); for any other, pass connector=, "
            "a connector with fetch(conn, sql, *args)"
        )
    return fetch
