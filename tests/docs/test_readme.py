"""Every shell command README.md and docs/getting-started.md show is run or checked here.

Each ```` ```sh ```` block is split into commands (lines, then ``&&``; ``#``
comments dropped), and each command must match one of the checks below:
``elasticpool --version`` runs; ``python -m build`` builds the wheel (without
isolation, so no download) and the wheel is installed and imported;
``pip install`` of the checkout names only extras pyproject.toml declares (the
install itself is what ``.ci/run`` does first); ``elasticpool demo`` parses
with the real command line (tests/test_cli.py runs the demo); ``python -m
pytest`` is what ``.ci/run`` runs. A command with no check fails the test, so
a new command in the README comes with a way to keep it true.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from elasticpool import __version__

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", ROOT / "docs" / "getting-started.md")


def shell_commands(page: Path) -> list[str]:
    """The commands in ``page``'s sh blocks, comments stripped, ``&&`` chains split."""
    text = page.read_text()
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            command: list[str] = []
            for word in [*words, "&&"]:
                if word == "&&":
                    commands.append(shlex.join(command))
                    command = []
                else:
                    command.append(word)
    return commands


def declared_extras() -> set[str]:
    """The optional-dependency groups pyproject.toml declares."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([a-z][a-z0-9-]*) = \[", section, re.M))


def declared_version() -> str:
    """The version pyproject.toml declares."""
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found is not None
    return found[1]


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with this interpreter's environment; fail with its output if it fails."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False, cwd=cwd, env=os.environ
    )
    assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done


# ----------------------------------------------------------------------------- the checks


def check_pip_install(words: list[str], tmp_path: Path) -> None:
    """``pip install [-e] ".[extras]"`` (the checkout) or a built wheel with declared extras."""
    assert words[:2] == ["pip", "install"]
    target = words[-1]
    assert words[2:-1] in ([], ["-e"]), f"unexpected options in {words}"
    found = re.fullmatch(r"(\.|dist/elasticpool-[^\[]+\.whl)(?:\[([a-z,-]+)\])?", target)
    assert found, f"install from the checkout or its wheel, not {target!r}"
    if found[1] != ".":
        assert found[1] == f"dist/elasticpool-{declared_version()}-py3-none-any.whl"
    extras = set(filter(None, (found[2] or "").split(",")))
    assert extras <= declared_extras(), f"undeclared extras {extras - declared_extras()}"
    if words[2:-1] == ["-e"]:
        assert f'pip install --quiet -e "{target}"' in (ROOT / ".ci" / "run").read_text()


def check_build(words: list[str], tmp_path: Path) -> None:
    """``python -m build``: the wheel builds, installs, imports and has the command."""
    assert words == ["python", "-m", "build"]
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    out = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out))
    (wheel,) = out.glob("*.whl")
    assert wheel.name == f"elasticpool-{declared_version()}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "elasticpool = elasticpool.cli:main" in archive.read(entry_points).decode()
    assert "elasticpool/py.typed" in names or not (ROOT / "src/elasticpool/py.typed").exists()
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
        "--target", str(site), str(wheel))  # fmt: skip
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import elasticpool; print(elasticpool.__file__, elasticpool.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    where, version = done.stdout.split()
    assert Path(where).is_relative_to(site)
    assert version == declared_version()


def check_version(words: list[str], tmp_path: Path) -> None:
    """``elasticpool --version`` prints the declared version."""
    assert words == ["elasticpool", "--version"]
    done = run(sys.executable, "-m", "elasticpool", "--version")
    assert (
        done.stdout.strip() == f"elasticpool {declared_version()}" == f"elasticpool {__version__}"
    )


def check_cli(words: list[str], tmp_path: Path) -> None:
    """Another ``elasticpool`` command: it parses (tests/test_cli.py and tests/cli/ run them)."""
    from elasticpool.cli import _parser

    assert words[0] == "elasticpool"
    _parser().parse_args(words[1:])


def check_pytest(words: list[str], tmp_path: Path) -> None:
    """``python -m pytest``: CI runs exactly this (running it here would recurse)."""
    assert words == ["python", "-m", "pytest"]
    assert "\npython -m pytest\n" in (ROOT / ".ci" / "run").read_text()


CHECKS: dict[str, Callable[[list[str], Path], None]] = {
    "pip install": check_pip_install,
    "python -m build": check_build,
    "elasticpool --version": check_version,
    "elasticpool": check_cli,
    "python -m pytest": check_pytest,
}
"""Each check by the words a command starts with (the longest prefix wins)."""


def _check_for(command: str) -> Callable[[list[str], Path], None]:
    words = shlex.split(command)
    for prefix in sorted(CHECKS, key=len, reverse=True):
        if words[: len(prefix.split())] == prefix.split():
            return CHECKS[prefix]
    raise AssertionError(f"no test checks the command {command!r}: add one to {__file__}")


COMMANDS = sorted({(page.name, c) for page in PAGES for c in shell_commands(page)})


def test_the_pages_show_the_install_commands() -> None:
    """README and getting-started show the checkout install, the wheel build and --version."""
    for page in PAGES:
        shown = shell_commands(page)
        assert any(shlex.split(c)[:3] == ["pip", "install", ".[asyncpg]"] for c in shown), page.name
        assert "python -m build" in shown, page.name
        assert "elasticpool --version" in shown, page.name
        assert not any("pip install elasticpool" in c for c in shown), "not on PyPI"


@pytest.mark.parametrize(("page", "command"), COMMANDS)
def test_each_command_is_true(page: str, command: str, tmp_path: Path) -> None:
    """The command does what the page says (see the module docstring for each kind)."""
    _check_for(command)(shlex.split(command), tmp_path)
