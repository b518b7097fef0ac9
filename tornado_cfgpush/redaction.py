"""Secrets out of every line the server prints or logs: one helper, ``redact(text)``.

Its callers: the access and error logs (a request's URI may carry ``?token=``), the start-up
log line and ``--print-config`` (a broker URL or a plugin's DSN may carry a password), and error
messages that quote a bad value. Settings that are secrets as a whole (``--admin-token``, ...)
print as ``REDACTED`` without asking this module.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

REDACTED = "<redacted>"
# Query parameters whose value is a secret: ``?token=`` carries a subscriber's JWT.
SECRET_PARAMS = frozenset({"token", "access_token", "password"})
# scheme://authority: the authority is what comes before the path, query or fragment.
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\s]*)")
# libpq's key=value connection strings: password=secret, or password='a quoted secret'. Not a
# value this module wrote already (a ?password= it redacted as a query parameter).
_LIBPQ_PASSWORD = re.compile(r"(password\s*=\s*)(?!" + re.escape(REDACTED) + r")('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with each secret in it replaced by ``<redacted>``: the password of a URL
    (``redis://user:<redacted>@host``), the value of a secret query parameter
    (``/ws?tenant_id=acme&token=<redacted>``), and ``password=`` in a libpq connection string."""
    return _LIBPQ_PASSWORD.sub(lambda m: m.group(1) + REDACTED, _query_secrets(_AUTHORITY.sub(_url_password, text)))


def _url_password(found: re.Match[str]) -> str:
    # As urllib.parse.urlsplit reads it: the user information ends at the authority's last
    # "@", and its password starts after its first ":".
    userinfo, at, host = found["authority"].rpartition("@")
    if not at or ":" not in userinfo:
        return found.group(0)
    user = userinfo.partition(":")[0]
    return f"{found['scheme']}{user}:{REDACTED}@{host}"


def _query_secrets(text: str) -> str:
    path, sep, query = text.partition("?")
    if not sep:
        return text
    parts = []
    for part in query.split("&"):
        raw_name = part.split("=", 1)[0]
        secret = unquote_plus(raw_name).strip().lower() in SECRET_PARAMS  # %74oken is token too
        parts.append(f"{raw_name}={REDACTED}" if secret else part)
    return path + "?" + "&".join(parts)
