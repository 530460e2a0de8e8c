"""``OPTIONS["pool"]`` of a Django database, checked and turned into pool arguments.

Pure apart from the :class:`~django.core.exceptions.ImproperlyConfigured` it
raises: no Django settings are read here, so it can be tested on its own.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured

from .._settings import PoolSettings
from ..fleet import Membership, PostgresMembership, StaticMembership
from ..psycopg._face_args import PSYCOPG_NAMES, is_sync_connection_class

__all__ = [
    "DJANGO_SETS",
    "ELASTIC_OPTIONS",
    "MEMBERSHIPS",
    "PSYCOPG_OPTIONS",
    "pool_arguments",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value)


PSYCOPG_OPTIONS: Final[Mapping[str, tuple[str, Callable[[object], bool]]]] = {
    "conninfo": ("a libpq connection string", lambda v: isinstance(v, str)),
    "connection_class": ("a subclass of psycopg.Connection", is_sync_connection_class),
    "min_size": ("an integer", _is_int),
    "max_size": ("an integer or None", lambda v: v is None or _is_int(v)),
    "name": ("a non-empty string", _is_name),
    "close_returns": ("True or False", lambda v: isinstance(v, bool)),
    "timeout": ("a number of seconds", _is_number),
    "max_waiting": ("an integer", _is_int),
    "max_lifetime": ("a number of seconds", _is_number),
    "max_idle": ("a number of seconds", _is_number),
    "reconnect_timeout": ("a number of seconds", _is_number),
    "reconnect_failed": ("a callable", callable),
    "num_workers": ("an integer", _is_int),
    "reset": ("a callable", callable),
}
"""The keys of :class:`psycopg_pool.ConnectionPool` that Django passes on, and their types.

Their values are range-checked by the pool itself (its messages name the key).
"""

DJANGO_SETS: Final[Mapping[str, str]] = {
    "kwargs": "the connection parameters come from NAME, USER, PASSWORD, HOST, PORT and OPTIONS",
    "open": "the pool opens on the first connection Django makes",
    "configure": "Django configures each new connection itself (time zone, assume_role)",
    "check": "set CONN_HEALTH_CHECKS = True to check each connection when it is borrowed",
}
"""psycopg_pool arguments the backend sets itself, as Django's own backend does; not options."""

ELASTIC_OPTIONS: Final = (
    "total_max_connections",
    "membership",
    "reset_mode",
    *(
        field.name
        for field in dataclasses.fields(PoolSettings)
        if field.name not in PSYCOPG_NAMES and field.name != "total_max_connections"
    ),
)
"""elasticpool's own keys: ``membership``, the face's ``reset_mode``, and every
:class:`~elasticpool.PoolSettings` field psycopg_pool's parameters do not already set.

The pool checks their values; its messages name the field.
"""

MEMBERSHIPS: Final[Mapping[str, type[Membership]]] = {
    "postgres": PostgresMembership,
    "static": StaticMembership,
}
"""``OPTIONS["pool"]["membership"]["kind"]`` → the membership it makes (default ``"postgres"``)."""


def _where(alias: str) -> str:
    return f"DATABASES[{alias!r}]['OPTIONS']['pool']"


def _keywords(cls: type) -> list[str]:
    """The parameters of ``cls``'s constructor (what a membership dict may hold)."""
    return list(inspect.signature(cls).parameters)


def make_membership(alias: str, spec: object) -> Membership | None:
    """The membership ``OPTIONS["pool"]["membership"]`` asks for (``None``: no fleet).

    ``"postgres"`` is :class:`~elasticpool.PostgresMembership` with its
    defaults; a dict holds the constructor's arguments, with ``"kind"``
    (``"postgres"``, the default, or ``"static"``) choosing the class. Only
    these JSON-able forms are accepted: the backend makes a fresh membership
    for every pool it opens (after ``close_pool()``, in each test
    database), which a shared instance could not be.
    """
    where = f"{_where(alias)}['membership']"
    if spec is None:
        return None
    if spec == "postgres":
        return PostgresMembership()
    if not isinstance(spec, Mapping):
        raise ImproperlyConfigured(
            f"{where} must be 'postgres' or a dict of membership arguments "
            f"(e.g. {{'kind': 'postgres', 'table': 'elasticpool_fleet'}}), "
            f"not {type(spec).__name__} {spec!r}"
        )
    kwargs = dict(spec)
    kind = kwargs.pop("kind", "postgres")
    cls = MEMBERSHIPS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ImproperlyConfigured(
            f"{where}['kind'] must be one of {', '.join(map(repr, MEMBERSHIPS))} (got {kind!r})"
        )
    allowed = _keywords(cls)
    for key in kwargs:
        if key not in allowed:
            raise ImproperlyConfigured(
                f"{where} has no key {key!r}; a {kind!r} membership takes "
                f"{', '.join(['kind', *allowed])}"
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None


def pool_arguments(alias: str, options: object) -> dict[str, Any]:
    """Keyword arguments for :class:`elasticpool.psycopg.ConnectionPool` from ``OPTIONS["pool"]``.

    ``options`` is ``True`` (every default) or a dict of psycopg_pool
    arguments (:data:`PSYCOPG_OPTIONS`) and elasticpool settings
    (:data:`ELASTIC_OPTIONS`). ``membership`` is replaced by the membership
    it describes (see :func:`make_membership`); with one, ``name`` is
    required, as the members of a fleet are the pools of one name on one
    database.

    Raises :class:`~django.core.exceptions.ImproperlyConfigured` naming the
    key, for a key that is not an option (the ones the backend sets itself
    included, :data:`DJANGO_SETS`) or a value of the wrong type. Values in
    range are checked when the pool is made (see
    :func:`build_error`).
    """
    where = _where(alias)
    if options is True:
        return {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(
            f"{where} must be True or a dict of pool options, not {type(options).__name__}"
        )
    arguments: dict[str, Any] = {}
    for key, value in options.items():
        if key in DJANGO_SETS:
            raise ImproperlyConfigured(f"{where}[{key!r}] cannot be set: {DJANGO_SETS[key]}")
        if key in PSYCOPG_OPTIONS:
            what, ok = PSYCOPG_OPTIONS[key]
            if not ok(value):
                shown = "<hidden>" if key == "conninfo" else repr(value)
                raise ImproperlyConfigured(f"{where}[{key!r}] must be {what} (got {shown})")
        elif key not in ELASTIC_OPTIONS:
            raise ImproperlyConfigured(
                f"{where} has no option {key!r}; psycopg_pool's are "
                f"{', '.join(PSYCOPG_OPTIONS)}; elasticpool's are {', '.join(ELASTIC_OPTIONS)}"
            )
        arguments[key] = value
    if "membership" in arguments:
        membership = make_membership(alias, arguments.pop("membership"))
        if membership is not None:
            if "name" not in arguments:
                raise ImproperlyConfigured(
                    f"{where}['name'] is required with a membership: the fleet sharing "
                    "total_max_connections is every pool of that name on the database"
                )
            arguments["membership"] = membership
    return arguments


def build_error(alias: str, exc: TypeError | ValueError) -> ImproperlyConfigured:
    """The pool refused an option's value (``exc`` names it): the error to raise instead."""
    return ImproperlyConfigured(f"{_where(alias)}: {exc}")
