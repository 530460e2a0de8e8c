"""Argument checks: one rule for each kind of bad value, one wording.

Every public entry point that takes a count, a number of seconds, a choice,
a flag or a name checks it here, so the same mistake gets the same error
wherever it is made:

* a value of the wrong type is a :class:`TypeError`;
* a value of the right type but out of range is a :class:`ValueError`;
* both read ``"<argument> must be <what is allowed> (got <value>)"``, e.g.
  ``max_connections must be an integer >= 0 (got '3')``.

``bool`` is not a number here (``True`` is a wrong type, not 1). The
``*_type`` variants raise only the :class:`TypeError`: the drop-in faces
use them and then keep the value errors (and wording) of the library they
imitate.

These are checks, not conversions: nothing is coerced, and a check that
passes returns nothing (but :func:`check_connections`, which also tells a
count from a percentage of the server's connections).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = [
    "check_bool",
    "check_choice",
    "check_connections",
    "check_instance",
    "check_int",
    "check_int_type",
    "check_name",
    "check_number",
    "check_seconds",
    "check_seconds_type",
    "is_int",
    "is_number",
    "parse_percent",
]


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (``bool`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is an ``int`` or a ``float`` (``bool`` is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_allowed(low: int, high: int | None, optional: bool) -> str:
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return allowed + (" or None" if optional else "")


def check_int_type(
    name: str, value: object, *, low: int, high: int | None = None, optional: bool = False
) -> None:
    """:class:`TypeError` unless ``value`` is an integer (or ``None`` when ``optional``).

    The message names the range (``low``, ``high``) that :func:`check_int`
    would enforce; the range itself is not checked.
    """
    if not is_int(value) and not (optional and value is None):
        raise TypeError(f"{name} must be {_int_allowed(low, high, optional)} (got {value!r})")


def check_int(
    name: str, value: object, *, low: int, high: int | None = None, optional: bool = False
) -> None:
    """An integer in ``[low, high]`` (``high=None``: no upper bound); ``None`` if ``optional``."""
    if optional and value is None:
        return
    check_int_type(name, value, low=low, high=high, optional=optional)
    assert isinstance(value, int)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {_int_allowed(low, high, optional)} (got {value!r})")


def _seconds_allowed(low: float, strict: bool, optional: bool, finite: bool) -> str:
    number = "a finite number" if finite else "a number"
    op = ">" if strict else ">="
    return f"{number} of seconds {op} {low:g}" + (" or None" if optional else "")


def check_seconds_type(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    strict: bool = True,
    optional: bool = False,
    finite: bool = True,
) -> None:
    """:class:`TypeError` unless ``value`` is a number (or ``None`` when ``optional``).

    The message names the range :func:`check_seconds` would enforce.
    """
    if not is_number(value) and not (optional and value is None):
        allowed = _seconds_allowed(low, strict, optional, finite)
        raise TypeError(f"{name} must be {allowed} (got {value!r})")


def check_seconds(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    strict: bool = True,
    optional: bool = False,
    finite: bool = True,
) -> None:
    """A number of seconds above ``low`` (or at it, unless ``strict``); ``None`` when ``optional``.

    ``nan`` is never allowed; infinity only when ``finite`` is false (a
    per-call timeout may be ``math.inf``, a setting may not).
    """
    # On the acquire path of the faces (a timeout on every call): kept cheap.
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        allowed = _seconds_allowed(low, strict, optional, finite)
        raise TypeError(f"{name} must be {allowed} (got {value!r})")
    if (value > low if strict else value >= low) and not (finite and value == math.inf):
        return  # nan fails both comparisons
    allowed = _seconds_allowed(low, strict, optional, finite)
    raise ValueError(f"{name} must be {allowed} (got {value!r})")


def check_number(name: str, value: object, *, low: float, high: float) -> None:
    """A number in ``[low, high]`` (a fraction, not seconds)."""
    allowed = f"a number in [{low:g}, {high:g}]"
    if not is_number(value):
        raise TypeError(f"{name} must be {allowed} (got {value!r})")
    assert isinstance(value, (int, float))
    if not low <= value <= high:  # also rejects nan
        raise ValueError(f"{name} must be {allowed} (got {value!r})")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """One of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(choices)} (got {value!r})")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)} (got {value!r})")


def check_bool(name: str, value: object) -> None:
    """``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (got {value!r})")


def check_name(name: str, value: object) -> None:
    """A non-empty string (a pool's name: it appears in every message and metric)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty string (got {value!r})")
    if not value:
        raise ValueError(f"{name} must be a non-empty string (got {value!r})")


def check_instance(name: str, value: object, cls: type | tuple[type, ...], what: str) -> None:
    """An instance of ``cls``; the message says ``what`` that is and names the type given.

    Only the type's name is shown, never the value: a wrong argument may be a
    connection string with a password in it.
    """
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {what} (got {type(value).__name__})")


_PERCENT = re.compile(r"\s*(\d+(?:\.\d*)?)\s*%\s*")


def parse_percent(value: object) -> float | None:
    """``80.0`` for ``"80%"``; ``None`` for anything that is not a percentage string."""
    if not isinstance(value, str):
        return None
    m = _PERCENT.fullmatch(value)
    return float(m.group(1)) if m else None


def check_connections(name: str, value: object) -> tuple[int | None, float | None]:
    """A count of connections or a percentage of the server's: ``(count, percent)``, checked.

    ``None`` is allowed (both ``None``); a wrong type is a :class:`TypeError`, a
    wrong value a :class:`ValueError`, each naming ``name`` and what is allowed.
    """
    allowed = (
        "an integer >= 1, a percentage of the server's usable max_connections such as "
        "'80%' (in (0%, 100%]), or None"
    )
    if value is None:
        return None, None
    if isinstance(value, str):
        percent = parse_percent(value)
        if percent is None or not 0 < percent <= 100:
            raise ValueError(f"{name} must be {allowed} (got {value!r})")
        return None, percent
    if not is_int(value):
        raise TypeError(f"{name} must be {allowed} (got {value!r})")
    assert isinstance(value, int)
    if value < 1:
        raise ValueError(f"{name} must be {allowed} (got {value!r})")
    return value, None
