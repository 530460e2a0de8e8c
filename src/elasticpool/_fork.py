"""``os.fork()``: what a child does with the pools its parent opened. No I/O, ever.

A forked child shares its parent's sockets (and the epoll set of its event
loop). Using a parent's connection from the child would write on the
parent's sessions; closing one would end them. So every pool opened in a
process is registered here with :func:`watch`, and in a child the
registered callback makes it give everything up without I/O and refuse
every use (the pool's own code, e.g. ``Pool._forked``); the connections it
held are kept referenced with :func:`inherit` for the life of the child, so
no driver's cleanup-on-collect runs on them. :func:`forked_error` is the
error such a pool raises.

It costs nothing on the acquire path: a forked pool's lifecycle state is no
longer ``OPEN``, which that path checks anyway.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["forked_error", "inherit", "watch"]

logger = logging.getLogger("elasticpool")

T = TypeVar("T")

# Every pool (and routing pool) opened in this process, held weakly, with what to call
# in a forked child: a function of the pool (not a bound method, which would keep it alive).
_watched: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
# In a forked child: the parent's connections, never to be collected here.
_inherited: list[object] = []


def watch(owner: T, forked: Callable[[T], None]) -> None:
    """Call ``forked(owner)`` in a child forked from this process (``owner`` is held weakly).

    Registering the same owner again replaces its callback. ``forked`` must
    not do I/O or raise (a failure is logged, never raised: a fork must not
    fail because of a pool).
    """
    _watched[owner] = forked


def inherit(obj: object) -> None:
    """Keep ``obj`` (a parent's connection, in a forked child) referenced for good."""
    _inherited.append(obj)


def forked_error(what: str, pid: int, advice: str) -> RuntimeError:
    """The error a pool opened in process ``pid`` raises in a forked child.

    ``what`` names it (``"pool 'api'"``); ``advice`` says what to do instead.
    """
    return RuntimeError(
        f"{what} was opened in process {pid} and cannot be used in forked process "
        f"{os.getpid()}: {advice}"
    )


def _after_fork_in_child() -> None:
    """``os.fork()`` child: every pool opened in the parent gives its connections up."""
    for owner, forked in list(_watched.items()):
        try:
            forked(owner)
        except Exception:  # pragma: no cover - a connector's abandon; never fail a fork
            logger.exception("%r: giving up the parent's connections failed", owner)
    _watched.clear()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
