"""Fixtures of this package's tests only. The running server, the clients, ``publish`` and
``wait_for`` come from the pytest plugin ``tornado_cfgpush.testing`` (loaded by the conftest.py
at the repository's root), which the plugin distributions' tests use too.
"""
from __future__ import annotations

import sys

import pytest

from .plugintools import Site


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on ``sys.path`` for distributions the test writes (``Site.add``)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield Site(root)
    # Forget the modules imported from the folder, so no other test sees them.
    for name in set(sys.modules) - before:
        if str(root) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]
