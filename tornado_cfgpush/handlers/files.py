"""The files API (``--serve-content``, issue #14): the announced content of a tenant's served
files, so that its clients need not ask the application for it.

``GET /api/v1/tenants/<tenant>/files`` lists the served files with their checksums (as a
``Resync`` manifest does); ``GET /api/v1/tenants/<tenant>/files/<path>`` answers the file's
announced version: ``ETag`` its checksum, ``If-None-Match`` -> 304, ``Cache-Control:
no-cache``, gzip when accepted (compressed once per version). Authorized as ``/ws`` is
(``base.check_subscriber``: the tenant's token, or the admin token). A path that does not exist
and one that is not served get the same 404, so the patterns do not leak.

``?form=document`` answers a structured file's parsed document instead (``content.document_form``:
RFC 8785 canonical JSON, ``ETag`` its SHA-256, the events' ``document_checksum``), for pages
that cannot parse TOML or YAML; ``Cfgpush-Checksum`` names the raw version it is of. A file
with no such document answers 422 with its ``reason``; ``?form=raw`` is the default.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tornado import web

from ..auth import cross_site_refused, host_refusal
from ..broker import BrokerUnavailable
from ..content import DOCUMENT_FORM, ContentChanging, NoDocument, Version, accepts_gzip, none_match
from ..rules import path_error, tenant_id_error
from .base import JsonErrorsMixin, Refused, check_subscriber

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Serving

log = logging.getLogger("cfgpush.files")

NOT_FOUND = "no such served file"
RAW_FORM = "raw"
# The raw version a document form is of (its ETag is the document's own checksum).
SOURCE_HEADER = "Cfgpush-Checksum"


class FilesHandler(JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: Serving) -> None:
        self.core = core

    def compute_etag(self) -> None:
        return None  # the ETag is the version's checksum, set below; never a hash of the body

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")

    def _allow_origin(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and self.core.settings.allowed_origins:
            # check_subscriber refused a foreign Origin already: this one is allowed.
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", f"ETag, {SOURCE_HEADER}")
            self.set_header("Vary", "Origin, Accept-Encoding")

    def options(self, tenant_id: str, path: str | None = None) -> None:
        """A CORS preflight of an allowed page (its request carries Authorization)."""
        try:
            check_subscriber_origin(self)
        except Refused as refused:
            self.refuse(refused)
            return
        self._allow_origin()
        self.set_header("Access-Control-Allow-Methods", "GET")
        self.set_header("Access-Control-Allow-Headers", "Authorization, If-None-Match")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    async def get(self, tenant_id: str, path: str | None = None) -> None:
        try:
            problem = tenant_id_error(tenant_id)
            if problem:
                raise Refused(400, f"tenant_id {problem}")
            check_subscriber(self.request, self.core, tenant_id)
            if path is not None and path_error(path):
                raise Refused(404, NOT_FOUND)  # not a path a file can have: not one either
            form = self.get_query_argument("form", RAW_FORM)
            if path is not None and form not in (RAW_FORM, DOCUMENT_FORM):
                raise Refused(400, f"form must be {RAW_FORM!r} or {DOCUMENT_FORM!r}")
        except Refused as refused:
            self.core.metrics.file_request(refused.status)
            self.refuse(refused)
            return
        self._allow_origin()
        await self.core.refresh_manifest(tenant_id)  # a follower of --workers asks its leader
        try:
            if path is None:
                body = {"tenant_id": tenant_id, "files": await self.core.served_files(tenant_id)}
                self.core.metrics.file_request(200)
                self.finish(body)
                return
            await self._file(tenant_id, path, form == DOCUMENT_FORM)
        except BrokerUnavailable as exc:
            log.warning("files API: %s", exc)
            self.core.metrics.file_request(503)
            self.refuse(Refused(503, "the broker is unavailable; retry later", {"Retry-After": "1"}))

    async def _file(self, tenant_id: str, path: str, document: bool) -> None:
        version: Version | None
        try:
            if document:
                both = await self.core.file_document(tenant_id, path)
                version = None if both is None else both[1]
                if both is not None:
                    self.set_header(SOURCE_HEADER, both[0].checksum)
            else:
                version = await self.core.file_content(tenant_id, path)
        except ContentChanging:
            self.core.metrics.file_request(503)
            self.refuse(Refused(503, "the file is being changed; retry", {"Retry-After": "1"}))
            return
        except NoDocument as none:
            self.core.metrics.file_request(422)
            self.set_status(422)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish({"error": f"the file has no JSON document ({none.reason})", "reason": none.reason})
            return
        if version is None:
            self.core.metrics.file_request(404)
            self.refuse(Refused(404, NOT_FOUND))
            return
        self.set_header("ETag", version.etag)
        self.set_header("Vary", "Origin, Accept-Encoding")
        if none_match(self.request.headers.get("If-None-Match"), version.etag):
            self.core.metrics.file_request(304)
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", version.content_type)
        body = version.body
        if version.gzipped is not None and accepts_gzip(self.request.headers.get("Accept-Encoding")):
            body = version.gzipped
            self.set_header("Content-Encoding", "gzip")
        self.core.metrics.file_request(200, len(body))
        self.finish(body)


def check_subscriber_origin(handler: FilesHandler) -> None:
    """A preflight carries no credentials: only the Host and Origin rules apply to it."""
    settings = handler.core.settings
    misdirected = host_refusal(handler.request, settings.allowed_hosts)
    if misdirected:
        raise Refused(421, misdirected)
    if cross_site_refused(handler.request.headers, settings.allowed_origins):
        raise Refused(403, "Origin not allowed")
