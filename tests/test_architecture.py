"""The walls between the package's parts (.ci/check_imports.py, docs/architecture.md) hold, and
the check itself sees what it must: cycles through type-only imports, walls broken through a
chain of imports or a lazy import, and what a process really loads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_checker():
    spec = importlib.util.spec_from_file_location("check_imports", REPO / ".ci" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


checker = load_checker()


def make_package(root: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``root`` with ``files`` (path -> source), ``__init__.py`` everywhere."""
    package = root / "pkg"
    for relative, source in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    for folder in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return package


def test_the_walls_hold_and_there_is_no_import_cycle():
    assert checker.check(REPO / "tornado_cfgpush") == []


def test_a_cycle_through_a_type_checking_import_is_found(tmp_path):
    package = make_package(
        tmp_path,
        {
            "app.py": "from .handlers import routes\n",
            "handlers.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .app import Service
        """,
        },
    )
    problems = checker.check(package, walls=(), layers=None)
    assert len(problems) == 1
    assert "pkg.app, pkg.handlers import each other" in problems[0]
    assert "pkg.handlers -> pkg.app (line 4, TYPE_CHECKING)" in problems[0]


def test_a_wall_broken_through_a_chain_of_imports_and_a_lazy_import_names_the_chain(tmp_path):
    package = make_package(
        tmp_path,
        {
            "sources/disk.py": "def run():\n    from ..util import helper\n",
            "util.py": "from .handlers import web\n",
            "handlers/web.py": "",
        },
    )
    wall = checker.Wall("sources never import handlers", ("pkg.sources",), ("pkg.handlers",))
    assert checker.check(package, walls=(wall,), layers=None) == [
        "sources never import handlers: pkg.sources.disk -> pkg.util (line 2) -> pkg.handlers.web (line 1)"
    ]


def test_a_load_wall_skips_type_only_imports_and_counts_parent_packages(tmp_path):
    package = make_package(
        tmp_path,
        {
            "worker/__init__.py": "import asyncio\n",
            "worker/main.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                import tornado.web
        """,
        },
    )
    wall = checker.Wall("the worker starts light", ("pkg.worker.main",), ("tornado", "asyncio"), runtime=True)
    assert checker.check(package, walls=(wall,), layers=None) == [
        "the worker starts light: pkg.worker -> asyncio (line 1)"
    ]
    ignored = checker.Wall(
        "the worker starts light",
        ("pkg.worker.main",),
        ("tornado", "asyncio"),
        runtime=True,
        ignore=(("pkg.worker", "asyncio"),),
    )
    assert checker.check(package, walls=(ignored,), layers=None) == []


def test_a_module_importing_a_later_layer_or_in_no_layer_is_named(tmp_path):
    package = make_package(tmp_path, {"low.py": "from . import high\n", "high.py": "", "stray.py": ""})
    layers = (("pkg", "pkg.low"), ("pkg.high",))
    assert checker.check(package, walls=(), layers=layers) == [
        "layers: pkg.low (layer 1) imports pkg.high (layer 2), line 1",
        "layers: pkg.stray is in no layer (LAYERS in .ci/check_imports.py)",
    ]


def test_the_script_exits_1_with_a_line_per_problem(tmp_path):
    make_package(tmp_path / "repo", {"a.py": "from . import b\n", "b.py": "from . import a\n"})
    (tmp_path / "repo" / "pkg").rename(tmp_path / "repo" / "tornado_cfgpush")
    done = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "check_imports.py"), str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no import cycle: tornado_cfgpush.a, tornado_cfgpush.b import each other" in done.stdout


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("tornado_cfgpush.sources.filesystem.worker", ["tornado", "asyncio", "marshmallow"]),
        ("tornado_cfgpush.hub", ["marshmallow", "tornado_cfgpush.schemas", "tornado_cfgpush.plugins"]),
        ("tornado_cfgpush.schemas", ["tornado"]),
        ("tornado_cfgpush.plugins", ["tornado"]),
        ("tornado_cfgpush.ws.protocol", ["asyncio", "tornado"]),
    ],
)
def test_what_a_fresh_interpreter_loads_with_the_module(module, forbidden):
    """The walls' load rules, checked where they matter: in a new process, third-party
    packages' own imports included (watchdog, PyYAML), which the static check does not read."""
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)] == []
