"""The repository's tests (tests/ and the plugin distributions' under plugins/*/tests) run against
real servers through the pytest plugin ``tornado_cfgpush.testing``; a top-level conftest.py is
where pytest takes ``pytest_plugins`` for the whole run."""

pytest_plugins = ["tornado_cfgpush.testing"]
