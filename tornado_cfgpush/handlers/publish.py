"""``POST /api/v1/events``: publish from outside, through the same schema as every source.

Each publish token has a budget (``PublishBudget``, ``--publish-rate`` / ``--publish-burst``):
every request it authenticates spends one event of it, valid or not, since a refused body
costs the loop too. Past it: 429 with ``Retry-After``, and nothing is published.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from marshmallow import ValidationError
from tornado import web

from ..auth import token_list
from ..broker import BrokerUnavailable
from ..content import ContentRefused
from ..metrics import RATE_LIMITED
from ..schemas import TOO_DEEP, wire_safe_messages
from .base import JsonErrorsMixin, Refused, check_token

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Publishing
    from ..settings import Settings

log = logging.getLogger("cfgpush.publish")

MAX_BODY_BYTES = 64 * 1024
# ``content`` (the file's new bytes, base64): at most this many bytes decoded; a body that
# carries it may be larger than MAX_BODY_BYTES by its encoding.
MAX_CONTENT_BYTES = 256 * 1024
MAX_BODY_WITH_CONTENT = MAX_BODY_BYTES + (MAX_CONTENT_BYTES + 2) // 3 * 4
SOURCE_NAME = "api"


class PublishBudget:
    """A token bucket per publish token: ``rate`` events per second, ``burst`` at once.

    Keyed by the token itself (the settings hold it anyway), so the buckets are as many as the
    configured tokens: a wrong token is refused before it gets one. ``rate`` 0: no limit.
    """

    def __init__(self, rate: int, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(burst, 1)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # token -> (events left, when)

    @classmethod
    def from_settings(cls, settings: Settings) -> PublishBudget:
        return cls(settings.publish_rate, settings.publish_burst)

    def spend(self, token: str) -> float:
        """Spend one event of ``token``'s budget: 0.0 when it had one, else the seconds until
        it will (nothing is spent then)."""
        if not self.rate:
            return 0.0
        now = self.clock()
        left, then = self._buckets.get(token, (float(self.burst), now))
        left = min(float(self.burst), left + (now - then) * self.rate)
        if left < 1.0:
            self._buckets[token] = (left, now)
            return (1.0 - left) / self.rate
        self._buckets[token] = (left - 1.0, now)
        return 0.0


class PublishHandler(JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: Publishing, budget: PublishBudget) -> None:
        self.core = core
        self.budget = budget  # one per application (handlers.default_handlers), kept across requests

    async def post(self) -> None:
        try:
            # Several tokens (one per publisher, rotated one at a time): any of them.
            token = check_token(self, token_list(self.core.settings.publish_token), "publish", wrong_status=403)
            wait = self.budget.spend(token)
            if wait:
                self.core.metrics.rejected(SOURCE_NAME, RATE_LIMITED)
                raise Refused(
                    429,
                    f"over this token's budget of {self.budget.rate} events per second "
                    f"(burst {self.budget.burst}); retry later",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            payload = self._payload()
            content = self._content(payload)
        except Refused as refused:
            self.refuse(refused)
            return
        try:
            if content is None:
                event_id = await self.core.publish(payload, SOURCE_NAME)
            else:
                event_id = await self.core.publish(payload, SOURCE_NAME, content=content)
        except ContentRefused as exc:
            # The validation gate (or the checksum) refused the content: nothing was published.
            self.set_status(422)
            self.finish(
                {"error": f"the content is refused: {exc.reason}", "pointer": exc.pointer, "reason": exc.reason}
            )
            return
        except ValidationError as exc:
            self.set_status(400)
            # Field names come from the body: written so that the answer is valid Unicode.
            self.finish(
                {
                    "error": "the event does not match the ConfigChanged schema",
                    "fields": wire_safe_messages(exc.messages),
                }
            )
            return
        except BrokerUnavailable as exc:
            log.warning("publish refused: %s", exc)
            self.set_status(503)
            self.set_header("Retry-After", "1")
            self.finish({"error": "the broker is unavailable; nothing was published, retry later"})
            return
        self.set_status(202)
        self.finish({"event_id": event_id})

    def _payload(self) -> dict:
        body = self.request.body
        # Past 64 KiB only a body with content is read at all (a quick look before parsing).
        if len(body) > MAX_BODY_WITH_CONTENT or (len(body) > MAX_BODY_BYTES and b'"content"' not in body):
            raise Refused(413, f"the body must be at most {MAX_BODY_BYTES} bytes (besides content)")
        content_type = self.request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Refused(415, "the body must be JSON (Content-Type: application/json)")
        try:
            payload = json.loads(self.request.body)
        except ValueError as exc:
            raise Refused(400, f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise Refused(400, f"the body is {TOO_DEEP}") from None
        if not isinstance(payload, dict):
            raise Refused(400, "the body must be a JSON object: the inside of ConfigChanged without event_id")
        if "content" not in payload and len(self.request.body) > MAX_BODY_BYTES:
            raise Refused(413, f"the body must be at most {MAX_BODY_BYTES} bytes (besides content)")
        return payload

    @staticmethod
    def _content(payload: dict) -> bytes | None:
        """``content`` taken out of the body: the file's new bytes, standard base64 (RFC 4648)."""
        if "content" not in payload:
            return None
        encoded = payload.pop("content")
        if not isinstance(encoded, str):
            raise Refused(400, "content must be a base64 string (RFC 4648) of the file's bytes")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(400, "content is not valid base64 (RFC 4648, standard alphabet, padded)") from None
        if len(data) > MAX_CONTENT_BYTES:
            raise Refused(413, f"content must be at most {MAX_CONTENT_BYTES} bytes")
        return data
