# The running server, clients and helpers of these tests: cfgpush's pytest plugin
# (docs/plugins.md in tornado_cfgpush, "Testing a plugin").
pytest_plugins = ["tornado_cfgpush.testing"]
