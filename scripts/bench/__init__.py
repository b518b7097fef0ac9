"""The benchmark suite's, the soak's and the fault suite's helpers (scripts/bench.py,
scripts/soak.py and scripts/faults.py are the entry points).

Never imported by the package: ``scripts/bench.py`` puts ``scripts/`` on ``sys.path``.

* ``loadgen``   raw asyncio WebSocket clients and the HTTP trigger
* ``procs``     processes started (pinned, fd limit raised), their CPU and RSS, cleanup
* ``targets``   the servers under test: cfgpush's CLI and the baselines of ``servers/``
* ``scenarios`` fanout, latency, memory, idle, e2e, storm, the chart's sweep
* ``burst``     the burst scenario (10 000 files at once) and the large-file case
* ``writer``    a process of its own that writes into a config folder (and logs each write)
* ``lag``       the event loop's lag: the server's histogram, and a Ping probe from outside
* ``checker``   the soak's and the fault suite's verdict: every client's stream against the writer's log
* ``timeline``  when each client had each save: latency, the catch-up after a fault
* ``cluster``   the soak's and the fault suite's cluster: nodes, the private Redis, clients, the folder
* ``tcpproxy``  a TCP proxy that delays, holds, drops and freezes (``scripts/faults.py``, the tests)
* ``report``    tables, targets met / NOT met, Markdown, the charts
"""
