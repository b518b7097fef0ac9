"""cfgpush-webhook: a Git forge's push webhook becomes one event per changed configuration file.

``POST /hooks/git`` (``--webhook-path``) accepts GitHub and GitLab push payloads. GitHub's
``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with ``--webhook-secret``) or GitLab's
``X-Gitlab-Token`` (equal to the secret) is checked in constant time; a missing or wrong one
gets 401 and nothing is emitted. A delivery seen before (its delivery id, or the very same
signed body) gets 409: replays are refused, from a bounded memory of recent deliveries.

The repository holds ``[<root>/]<tenant>/<path>``: each added, modified or removed file of a
push to the watched branch becomes ``created``, ``modified`` or ``deleted`` for that tenant and
path. Payloads carry no content, so events have no ``checksum`` (``null`` when deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections import OrderedDict
from typing import Any

from marshmallow import ValidationError
from tornado import web

from tornado_cfgpush import Emit, hookimpl
from tornado_cfgpush.schemas import path_error, tenant_id_error

__version__ = "0.1.0"

log = logging.getLogger("cfgpush.webhook")

SOURCE_NAME = "webhook"
DEFAULT_PATH = "/hooks/git"
MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_REPLAY_MEMORY = 10_000
GITHUB_COMMITS_LISTED = 20  # GitHub lists at most 20 commits in a push payload


class WebhookSource:
    """The source the route emits through; it only waits (and is ready) once it has ``emit``."""

    name = SOURCE_NAME

    def __init__(self) -> None:
        self.emit: Emit | None = None
        self.started = asyncio.Event()

    async def run(self, emit: Emit) -> None:
        self.emit = emit
        self.started.set()
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled at shutdown
        finally:
            self.emit = None


class ReplayGuard:
    """Delivery keys seen recently, oldest forgotten first: memory is bounded by ``size``."""

    def __init__(self, size: int = DEFAULT_REPLAY_MEMORY):
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, *keys: str) -> bool:
        return any(k in self._seen for k in keys)

    def remember(self, *keys: str) -> None:
        for key in keys:
            self._seen[key] = None
            self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def forget(self, *keys: str) -> None:
        for key in keys:
            self._seen.pop(key, None)


class WebhookConfig:
    def __init__(
        self, secret: str, root: str = "", branch: str | None = None, replay_memory: int = DEFAULT_REPLAY_MEMORY
    ):
        self.secret = secret.encode("utf-8")
        self.root = root.strip("/")
        self.branch = branch
        self.replays = ReplayGuard(replay_memory)


def net_changes(commits: list[dict]) -> dict[str, str]:
    """``{file: change_type}`` over a push's commits, oldest first: a file added then modified is
    ``created``; added then removed is nothing; removed then added again is ``modified``."""
    before: dict[str, bool] = {}  # existed before the push
    after: dict[str, bool] = {}  # exists after it
    for commit in commits:
        for kind, exists in (("removed", False), ("added", True), ("modified", True)):
            for name in commit.get(kind) or ():
                if not isinstance(name, str):
                    continue
                before.setdefault(name, kind != "added")
                after[name] = exists
    changes = {}
    for name, existed in before.items():
        exists = after[name]
        if existed and exists:
            changes[name] = "modified"
        elif exists:
            changes[name] = "created"
        elif existed:
            changes[name] = "deleted"
    return changes


class PushHandler(web.RequestHandler):
    def initialize(self, config: WebhookConfig) -> None:
        self.config = config

    def _json_error(self, status: int, reason: str) -> None:
        self.set_status(status)
        self.finish({"error": reason})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"error": self._reason if status_code < 500 else "internal server error"})

    async def post(self) -> None:
        body = self.request.body
        headers = self.request.headers
        if len(body) > MAX_BODY_BYTES:
            return self._json_error(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
        if "X-GitHub-Event" in headers:
            forge, event, delivery = "github", headers["X-GitHub-Event"], headers.get("X-GitHub-Delivery")
            if not self._github_signature_ok(body, headers.get("X-Hub-Signature-256", "")):
                log.warning("refused a GitHub delivery %s: bad or missing X-Hub-Signature-256", delivery)
                return self._json_error(401, "bad or missing X-Hub-Signature-256")
        elif "X-Gitlab-Event" in headers:
            forge, event = "gitlab", headers["X-Gitlab-Event"]
            delivery = headers.get("X-Gitlab-Event-UUID") or headers.get("Idempotency-Key")
            token = headers.get("X-Gitlab-Token", "").encode("utf-8")
            if not hmac.compare_digest(token, self.config.secret):
                log.warning("refused a GitLab delivery %s: bad or missing X-Gitlab-Token", delivery)
                return self._json_error(401, "bad or missing X-Gitlab-Token")
        else:
            return self._json_error(400, "not a GitHub or GitLab webhook (no X-GitHub-Event or X-Gitlab-Event)")
        # Authenticated from here on: only now may the request touch the replay memory.
        if event == "ping":
            return self.finish({"ok": "pong"})
        if event not in ("push", "Push Hook"):
            self.set_status(202)
            return self.finish({"ignored": f"event {event!r}"})
        if not delivery:
            return self._json_error(
                400, "the delivery id header is missing (X-GitHub-Delivery, X-Gitlab-Event-UUID or Idempotency-Key)"
            )
        keys = (f"{forge}:id:{delivery}", f"{forge}:body:{hashlib.sha256(body).hexdigest()}")
        if self.config.replays.seen(*keys):
            log.warning("refused a replayed %s delivery %s", forge, delivery)
            return self._json_error(409, "this delivery was received before (replay refused)")
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return self._json_error(400, f"the body is not a JSON object: {exc}")
        source = next((s for s in self.application.cfgpush.sources if isinstance(s, WebhookSource)), None)
        if source is None or source.emit is None:
            self.set_header("Retry-After", "1")
            return self._json_error(503, "the webhook source is not running yet; retry")
        self.config.replays.remember(*keys)  # before the first await: a concurrent replay is refused too
        try:
            result = await self._push(forge, payload, source.emit)
        except Exception:
            self.config.replays.forget(*keys)  # not handled: the forge's retry must get through
            raise
        self.set_status(202 if result.get("events") else 200)
        self.finish(result)

    def _github_signature_ok(self, body: bytes, header: str) -> bool:
        expected = "sha256=" + hmac.new(self.config.secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(header.strip().encode("utf-8"), expected.encode("utf-8"))

    async def _push(self, forge: str, payload: dict, emit: Emit) -> dict:
        ref = payload.get("ref")
        repository = payload.get("repository") if forge == "github" else payload.get("project")
        repository = repository if isinstance(repository, dict) else {}
        branch = self.config.branch or repository.get("default_branch") or "main"
        if ref != f"refs/heads/{branch}":
            return {"ignored": f"ref {ref!r} is not refs/heads/{branch}", "events": []}
        commits = [c for c in payload.get("commits") or () if isinstance(c, dict)]
        after = payload.get("after") or payload.get("checkout_sha")
        meta = {
            "forge": forge,
            "ref": ref,
            "commit": after,
            "repository": repository.get("full_name") or repository.get("path_with_namespace"),
        }
        meta = {k: v for k, v in meta.items() if isinstance(v, str)}
        events, tenants, skipped = [], set(), []
        for name, change_type in sorted(net_changes(commits).items()):
            target = self._target(name)
            if target is None:
                skipped.append(name)
                continue
            tenant_id, path = target
            body: dict[str, Any] = {"tenant_id": tenant_id, "change_type": change_type, "path": path, "meta": meta}
            if change_type == "deleted":
                body["checksum"] = None
            try:
                event_id = await emit(body)
            except ValidationError:
                skipped.append(name)  # logged and counted by the server
                continue
            tenants.add(tenant_id)
            events.append({"event_id": event_id, "tenant_id": tenant_id, "path": path, "change_type": change_type})
        truncated = (forge == "github" and len(commits) >= GITHUB_COMMITS_LISTED) or (
            forge == "gitlab"
            and isinstance(payload.get("total_commits_count"), int)
            and payload["total_commits_count"] > len(commits)
        )
        if truncated:
            # The payload does not list every commit: some changed files may be missing.
            await emit.gap(None)
        log.info(
            "%s push %s: %d events, %d files outside the layout%s",
            forge,
            after,
            len(events),
            len(skipped),
            "; payload truncated, every client resyncs" if truncated else "",
        )
        return {"events": events, "skipped": skipped, "resync": truncated}

    def _target(self, name: str) -> tuple[str, str] | None:
        """``(tenant_id, path)`` of a repository file under ``[root/]<tenant>/<path>``, or None."""
        root = self.config.root
        if root:
            if not name.startswith(root + "/"):
                return None
            name = name[len(root) + 1 :]
        tenant_id, sep, path = name.partition("/")
        if not sep or tenant_id_error(tenant_id) or path_error(path):
            return None
        return tenant_id, path


# -- hooks ------------------------------------------------------------------------------------------


@hookimpl
def cfgpush_add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cfgpush-webhook")
    group.add_argument(
        "--webhook-secret",
        dest="webhook_secret",
        metavar="SECRET",
        help="GitHub webhook secret / GitLab secret token (16 characters at least); the route is off without it",
    )
    group.add_argument(
        "--webhook-path",
        dest="webhook_path",
        default=DEFAULT_PATH,
        help=f"where the forge posts (default {DEFAULT_PATH})",
    )
    group.add_argument(
        "--webhook-root",
        dest="webhook_root",
        default="",
        help="folder of the repository holding <tenant>/<path> (default: its top)",
    )
    group.add_argument(
        "--webhook-branch",
        dest="webhook_branch",
        default=None,
        help="branch whose pushes count (default: the repository's default branch)",
    )
    group.add_argument(
        "--webhook-replay-memory",
        dest="webhook_replay_memory",
        type=_replay_memory,
        default=DEFAULT_REPLAY_MEMORY,
        help="deliveries remembered to refuse replays",
    )


def _replay_memory(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def _secret(settings) -> str | None:
    secret = settings.extra.get("webhook_secret")
    if secret is None:
        return None
    secret = str(secret).strip()
    if len(secret) < 16:
        raise ValueError("--webhook-secret must be at least 16 characters")
    return secret


def _path(settings) -> str:
    path = settings.extra.get("webhook_path") or DEFAULT_PATH
    if not path.startswith("/"):
        raise ValueError(f"--webhook-path must start with '/', not {path!r}")
    return path


@hookimpl
def cfgpush_register_sources(settings) -> list[WebhookSource]:
    # Called first (start-up errors are reported in one line): check every option here.
    if not _secret(settings):
        return []
    _path(settings)
    return [WebhookSource()]


@hookimpl
def cfgpush_register_routes(settings) -> list[tuple]:
    secret = _secret(settings)
    if not secret:
        return []
    path = _path(settings)
    config = WebhookConfig(
        secret,
        root=settings.extra.get("webhook_root") or "",
        branch=settings.extra.get("webhook_branch"),
        replay_memory=int(settings.extra.get("webhook_replay_memory") or DEFAULT_REPLAY_MEMORY),
    )
    return [(re.escape(path), PushHandler, {"config": config})]
