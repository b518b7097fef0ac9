"""Plugins as the tests install them: distributions written into a folder on ``sys.path``, and the
example third-party plugin (plugins/cfgpush-ticker) when it is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tornado_cfgpush import PROJECT_NAME
from tornado_cfgpush.testing import unavailable


class Site:
    """A folder on ``sys.path`` holding distributions written by the test."""

    def __init__(self, root: Path):
        self.root = root

    def add(
        self, dist: str, entry_points: dict[str, str], modules: dict[str, str] | None = None, folder: str = ""
    ) -> None:
        where = self.root / folder if folder else self.root
        # The folder name escapes "-" as "_" like an installer does: importlib.metadata tells
        # distributions apart by the name in it, up to the first "-".
        info = where / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{PROJECT_NAME}]\n{lines}")
        for module, source in (modules or {}).items():
            (where / f"{module}.py").write_text(source)


def ticker_installed() -> bool:
    """Whether the example third-party plugin (plugins/cfgpush-ticker) is installed."""
    return importlib.util.find_spec("cfgpush_ticker") is not None


def need_ticker() -> None:
    if not ticker_installed():
        unavailable("the example plugin is not installed (pip install ./plugins/cfgpush-ticker)")
