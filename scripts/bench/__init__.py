"""The benchmark suite's helpers (scripts/bench.py is the entry point).

Never imported by the package: ``scripts/bench.py`` puts ``scripts/`` on ``sys.path``.

* ``loadgen``   raw asyncio WebSocket clients and the HTTP trigger
* ``procs``     processes started (pinned, fd limit raised), their CPU and RSS, cleanup
* ``targets``   the servers under test: cfgpush's CLI and the baselines of ``servers/``
* ``scenarios`` fanout, latency, memory, idle, e2e, storm, the chart's sweep
* ``report``    tables, targets met / NOT met, Markdown, the chart
"""
