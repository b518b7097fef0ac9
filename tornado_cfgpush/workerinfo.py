"""Which worker this process is, under ``--workers N`` (tornado_cfgpush.workers starts them).

The supervisor tells each worker, in the environment variable ``_CFGPUSH_WORKER`` (JSON), its
index, how many there are, the port they share and a private folder where workers find each
other (each serves its metrics on ``metrics-<index>.sock`` there, for ``/metrics``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

WORKER_ENV = "_CFGPUSH_WORKER"


@dataclass(frozen=True)
class Worker:
    index: int
    count: int
    port: int
    folder: str

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> Worker | None:
        text = environ.get(WORKER_ENV)
        if not text:
            return None
        return cls(**json.loads(text))

    def metrics_socket(self, index: int | None = None) -> Path:
        return Path(self.folder) / f"metrics-{self.index if index is None else index}.sock"

    def broker_socket(self) -> Path:
        """Where the leader (worker 0) serves the embedded broker to the others (broker/link.py)."""
        return Path(self.folder) / "broker.sock"
