"""The benchmark suite's and the soak's helpers (scripts/bench.py and scripts/soak.py are the
entry points).

Never imported by the package: ``scripts/bench.py`` puts ``scripts/`` on ``sys.path``.

* ``loadgen``   raw asyncio WebSocket clients and the HTTP trigger
* ``procs``     processes started (pinned, fd limit raised), their CPU and RSS, cleanup
* ``targets``   the servers under test: cfgpush's CLI and the baselines of ``servers/``
* ``scenarios`` fanout, latency, memory, idle, e2e, storm, the chart's sweep
* ``burst``     the burst scenario (10 000 files at once) and the large-file case
* ``writer``    a process of its own that writes into a config folder (and logs each write)
* ``lag``       the event loop's lag: the server's histogram, and a Ping probe from outside
* ``checker``   ``scripts/soak.py``'s verdict: every client's stream against the writer's log
* ``report``    tables, targets met / NOT met, Markdown, the charts
"""
