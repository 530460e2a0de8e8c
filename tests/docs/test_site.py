"""The docs site: it builds strictly, the API reference has links where the docstrings have roles.

The docstrings use Sphinx roles (``:class:`~elasticpool.Pool```); the griffe
extension in ``docs/_hooks/sphinx_roles.py`` turns them into links when
mkdocs builds the site. These tests build the real site and read its HTML,
exercise the extension on the loaded package, and check that a role it
cannot resolve fails a strict build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

griffe = pytest.importorskip("griffe")
pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "docs" / "_hooks" / "sphinx_roles.py"

ROLE_TEXT = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|exc|data|obj|const):")
"""What a role left unconverted looks like in the built HTML or the search index."""


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("elasticpool_docs_sphinx_roles", HOOK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``config`` into ``site``, run as CI runs it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=config.parent,
        env=env,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's docs site, built strictly once for this module."""
    out = tmp_path_factory.mktemp("site")
    done = mkdocs_build(ROOT / "mkdocs.yml", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


# ----------------------------------------------------------------------------- the built site


def test_the_built_site_shows_no_sphinx_role(site: Path) -> None:
    """No page, and no entry of the search index, holds ``:class:``-style text."""
    left = {
        str(page.relative_to(site)): sorted(set(ROLE_TEXT.findall(page.read_text())))
        for page in [*site.rglob("*.html"), site / "search" / "search_index.json"]
        if ROLE_TEXT.search(page.read_text())
    }
    assert left == {}


def test_the_api_reference_links_the_names_docstrings_refer_to(site: Path) -> None:
    """A role in a docstring is a link to the object's entry on the API page."""
    html = (site / "api" / "index.html").read_text()
    links = re.findall(r'<a class="autorefs autorefs-internal"[^>]*href="([^"]+)"', html)
    assert len(links) > 150
    for target in ("#elasticpool.Pool", "#elasticpool.PoolTimeout", "#elasticpool.Pool.close"):
        assert target in links
    anchors = set(re.findall(r'id="([^"]+)"', html))
    assert {link.removeprefix("#") for link in links if link.startswith("#")} <= anchors


def test_the_home_page_shows_the_demo_chart_and_the_pitch(site: Path) -> None:
    """The home page has the demo chart (the image exists) before the first code block."""
    html = (site / "index.html").read_text()
    image = re.search(r'<img[^>]*src="(img/demo\.png)"', html)
    assert image is not None
    assert (site / image[1]).stat().st_size > 10_000
    assert html.index("img/demo.png") < html.index("<pre")


def test_every_page_is_in_the_nav(site: Path) -> None:
    """The new pages are reachable from the navigation."""
    html = (site / "index.html").read_text()
    for page in ("pgbouncer", "compare-poolers", "architecture"):
        assert f'href="{page}/"' in html, page


CODE_COLUMNS = 100
"""Columns of code that fit beside both sidebars in a 1280 px window (see extra.css)."""


def test_code_examples_fit_the_page_width() -> None:
    """Every line of a python, sh, ini or toml block in docs/ fits without a sideways scroll.

    Blocks without a language (measured output, live tables) may be wider.
    """
    wide = [
        f"{page.name}: {line}"
        for page in sorted((ROOT / "docs").glob("**/*.md"))
        for block in re.findall(
            r"^```(?:python|sh|ini|toml)\n(.*?)^```", page.read_text(), re.M | re.S
        )
        for line in block.splitlines()
        if len(line) > CODE_COLUMNS
    ]
    assert wide == []


# ----------------------------------------------------------------------------- the extension


@pytest.fixture(scope="module")
def resolver() -> Any:
    """The extension's resolver over the package as griffe loads it from this checkout."""
    hook = _hook()
    package = griffe.load("elasticpool", search_paths=[str(ROOT / "src")])
    return hook.Resolver(package), package


def test_every_role_in_the_package_resolves(resolver: Any) -> None:
    """Converting every docstring of the package reports nothing unresolved."""
    package = griffe.load("elasticpool", search_paths=[str(ROOT / "src")])
    assert _hook().convert_package(package) == []


@pytest.mark.parametrize(
    ("where", "text", "expected"),
    [
        # a full path, shown in full; ``~`` shows the last part only
        (
            "elasticpool",
            ":class:`elasticpool.Pool`",
            "[`elasticpool.Pool`][elasticpool._pool.Pool]",
        ),
        ("elasticpool", ":class:`~elasticpool.Pool`", "[`Pool`][elasticpool._pool.Pool]"),
        # methods and functions get (); an explicit title is shown as written
        (
            "elasticpool._pool.Pool.acquire",
            ":meth:`close`",
            "[`close()`][elasticpool._pool.Pool.close]",
        ),
        (
            "elasticpool",
            ":meth:`the stats <elasticpool.Pool.stats>`",
            "[`the stats`][elasticpool._pool.Pool.stats]",
        ),
        # relative to the module, and Sphinx's ``.name`` search
        (
            "elasticpool._settings.PoolSettings",
            ":func:`.resolve_limit`",
            "[`resolve_limit()`][elasticpool._limits.resolve_limit]",
        ),
        (
            "elasticpool.asyncpg",
            ":class:`AsyncpgPool`",
            "[`AsyncpgPool`][elasticpool.asyncpg._face.AsyncpgPool]",
        ),
        # private objects and names outside the package: code, no link
        ("elasticpool._pool.Pool", ":meth:`_stale`", "`_stale()`"),
        ("elasticpool.asyncpg", ":class:`asyncpg.Pool`", "`asyncpg.Pool`"),
        ("elasticpool", ":class:`ValueError`", "`ValueError`"),
    ],
)
def test_roles_become_links_or_code(resolver: Any, where: str, text: str, expected: str) -> None:
    """Each form of role becomes an autorefs link to the canonical path, or plain code."""
    res, package = resolver
    obj = package[where.removeprefix("elasticpool.")] if where != "elasticpool" else package
    result = res.convert(text, obj)
    assert (result.text, result.problems) == (expected, [])


def test_an_unresolvable_role_is_reported(resolver: Any) -> None:
    """A name that resolves nowhere, or an unknown role, is a problem naming object and role."""
    res, package = resolver
    result = res.convert("see :class:`NoSuchThing` and :ref:`intro`", package)
    assert result.text == "see `NoSuchThing` and `intro`"
    assert result.problems == [
        "elasticpool: cannot resolve ':class:`NoSuchThing`'",
        "elasticpool: unknown role :ref: in ':ref:`intro`'",
    ]


def test_an_unresolvable_role_fails_the_strict_build(tmp_path: Path) -> None:
    """A docstring with a role nothing resolves makes ``mkdocs build --strict`` fail, naming it."""
    (tmp_path / "src" / "tiny").mkdir(parents=True)
    (tmp_path / "src" / "tiny" / "__init__.py").write_text(
        '"""Tiny."""\n\n\ndef f() -> None:\n    """Like :func:`g`, see :class:`Missing`."""\n\n\n'
        'def g() -> None:\n    """G."""\n'
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Tiny\n\n::: tiny\n")
    hook = tmp_path / "hooks.py"
    hook.write_text(HOOK.read_text().replace('PACKAGE = "elasticpool"', 'PACKAGE = "tiny"'))
    (tmp_path / "mkdocs.yml").write_text(
        json.dumps(
            {
                "site_name": "tiny",
                "strict": True,
                "plugins": [
                    {
                        "mkdocstrings": {
                            "handlers": {
                                "python": {
                                    "paths": ["src"],
                                    "options": {
                                        "docstring_style": "sphinx",
                                        "extensions": ["hooks.py:SphinxRoles"],
                                    },
                                }
                            }
                        }
                    }
                ],
            }
        )
    )
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "tiny.f: cannot resolve ':class:`Missing`'" in done.stderr
    assert "g" not in re.findall(r"cannot resolve ':func:`(\w+)`'", done.stderr)

    (tmp_path / "src" / "tiny" / "__init__.py").write_text(
        '"""Tiny."""\n\n\ndef f() -> None:\n    """Like :func:`g`."""\n\n\n'
        'def g() -> None:\n    """G."""\n'
    )
    shutil.rmtree(tmp_path / "site", ignore_errors=True)
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'href="#tiny.g"' in (tmp_path / "site" / "index.html").read_text()
