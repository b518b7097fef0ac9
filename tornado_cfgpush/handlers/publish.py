"""``POST /api/v1/events``: publish from outside, through the same schema as every source."""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from marshmallow import ValidationError
from tornado import web

from ..auth import token_list
from ..broker import BrokerUnavailable
from .base import JsonErrorsMixin, Refused
from .tenants import check_token

if TYPE_CHECKING:  # pragma: no cover
    from ..app import CfgPush

log = logging.getLogger("cfgpush.publish")

MAX_BODY_BYTES = 64 * 1024
SOURCE_NAME = "api"


class PublishHandler(JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: "CfgPush") -> None:
        self.core = core

    async def post(self) -> None:
        try:
            # Several tokens (one per publisher, rotated one at a time): any of them.
            check_token(self, token_list(self.core.settings.publish_token), "publish", wrong_status=403)
            payload = self._payload()
        except Refused as refused:
            self.refuse(refused)
            return
        try:
            event_id = await self.core.publish(payload, SOURCE_NAME)
        except ValidationError as exc:
            self.set_status(400)
            self.finish({"error": "the event does not match the ConfigChanged schema", "fields": exc.messages})
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
        if len(self.request.body) > MAX_BODY_BYTES:
            raise Refused(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
        content_type = self.request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Refused(415, "the body must be JSON (Content-Type: application/json)")
        try:
            payload = json.loads(self.request.body)
        except ValueError as exc:
            raise Refused(400, f"the body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise Refused(400, "the body must be a JSON object: the inside of ConfigChanged without event_id")
        return payload
