"""Who may subscribe: the built-in ``cfgpush_authorize`` (JWT), origins, tokens kept out of logs.

This module is the built-in plugin ``jwt`` (``--disable-plugin jwt`` blocks it; a third-party
``cfgpush_authorize`` runs before it anyway, the built-in is ``trylast``). It decides with
PyJWT, from the settings:

* ``jwt_secret`` (HS256), ``jwt_public_key`` (a PEM file: RS256 for an RSA key, ES256 for a
  P-256 key) or ``jwks`` (a JWKS file; the token's ``kid`` picks the key). Key files are read
  again when they change on disk, so keys rotate without a restart. No key set: everyone is
  allowed (authentication is off, as before this module).
* ``exp`` is required (there is no revocation list: a token that never expires could never be
  taken back) and must be a number, as ``nbf`` and ``iat`` when present (RFC 7519's
  NumericDate: PyJWT alone accepts ``"exp": "1999999999"``); ``iss`` and ``aud`` are checked
  when ``jwt_issuer`` / ``jwt_audience`` are set; the claim ``jwt_tenant_claim`` (default
  ``tenant_id``) must equal the requested tenant.
* Only the configured algorithm is accepted: ``none``, or HS256 signed with a public key
  (the algorithm-confusion attack), is refused like a bad signature.

A refusal is 401 (no token, malformed, expired, bad signature, wrong algorithm, issuer or
audience, unknown key id) or 403 (a valid token of another tenant), with a reason naming the
problem and never any key material or the token itself.

It also holds the other request checks that are about who may talk to the server: origins
(``--allowed-origin``), hosts (``--allowed-host``), tokens in requests, and keeping tokens out
of every log line, Tornado's own included (``MalformedRequestRedactor``).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from . import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from tornado.httputil import HTTPServerRequest

    from .settings import Settings

log = logging.getLogger("cfgpush.auth")

ALGORITHMS = ("HS256", "RS256", "ES256")
HMAC_MIN_BYTES = 32  # RFC 7518 section 3.2: a key at least as long as the hash
CLAIM_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,128}\Z")
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")


# -- the decision ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What ``cfgpush_authorize`` answers.

    ``allowed`` with ``expires_at`` (Unix time; None: never) or refused with ``status``
    (401 or 403; 503 when the check itself could not run) and a ``reason`` for the client.
    """

    allowed: bool
    status: int = 200
    reason: str = ""
    expires_at: float | None = None
    subject: str | None = None

    @classmethod
    def allow(cls, expires_at: float | None = None, subject: str | None = None) -> Decision:
        return cls(True, 200, "", expires_at, subject)

    @classmethod
    def deny(cls, status: int, reason: str) -> Decision:
        if status not in (401, 403, 503):
            raise ValueError(f"a refusal is 401, 403 or 503, not {status}")
        return cls(False, status, reason)


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.jwt_secret or settings.jwt_public_key or settings.jwks)


# -- keys -----------------------------------------------------------------------------------------


class KeyProblem(ValueError):
    """A key, key file or algorithm setting that cannot be used; the message says why."""


def _key_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyProblem(f"the RSA public key has {key.key_size} bits; at least 2048 are needed")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyProblem(f"the EC public key is on {key.curve.name}; ES256 needs P-256 (secp256r1)")
        return "ES256"
    raise KeyProblem(f"a {type(key).__name__} is not supported: use an RSA (RS256) or P-256 (ES256) public key")


def load_public_key(path: Path) -> tuple[Any, str]:
    """``(key, algorithm)`` from a PEM public key file; ``KeyProblem`` saying why not."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyProblem(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise KeyProblem(f"{str(path)!r} holds a private key: give the server the public key only")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyProblem(f"{str(path)!r} is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    return key, _key_algorithm(key)


def load_jwks(path: Path) -> dict[str | None, tuple[Any, str]]:
    """``{kid: (key, algorithm)}`` from a JWKS file (``{"keys": [...]}``)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyProblem(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyProblem(f"{str(path)!r} is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise KeyProblem(f'{str(path)!r} is not a JWKS: expected {{"keys": [...]}} with at least one key')
    keys: dict[str | None, tuple[Any, str]] = {}
    for index, entry in enumerate(document["keys"]):
        if not isinstance(entry, dict):
            raise KeyProblem(f"{str(path)!r}: key {index} is not an object")
        if "d" in entry or "k" in entry:
            raise KeyProblem(f"{str(path)!r}: key {index} is private or symmetric; a JWKS file holds public keys only")
        if entry.get("use") not in (None, "sig"):
            continue  # an encryption key
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            raise KeyProblem(f"{str(path)!r}: key {index} cannot be used ({type(exc).__name__})") from None
        algorithm = jwk.algorithm_name
        if algorithm not in ("RS256", "ES256"):
            raise KeyProblem(f"{str(path)!r}: key {index} is for {algorithm}; only RS256 and ES256 keys are accepted")
        kid = entry.get("kid")
        if kid in keys:
            raise KeyProblem(f"{str(path)!r}: two keys share the kid {kid!r}")
        keys[kid] = (jwk.key, algorithm)
    if not keys:
        raise KeyProblem(f"{str(path)!r} has no signing key")
    return keys


class Verifier:
    """The JWT check of one ``Settings``; re-reads a key file when it changes on disk."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._keys: dict[str | None, tuple[Any, str]] = {}
        if settings.jwt_secret:
            secret = settings.jwt_secret
            if len(secret.encode("utf-8")) < HMAC_MIN_BYTES:
                raise KeyProblem(f"the JWT secret must be at least {HMAC_MIN_BYTES} bytes for HS256")
            algorithm = settings.jwt_algorithm or "HS256"
            if algorithm != "HS256":
                raise KeyProblem(f"--jwt-algorithm {algorithm} needs --jwt-public-key or --jwks, not a secret")
            self._keys = {None: (secret, "HS256")}
        else:
            if settings.jwt_algorithm == "HS256":
                raise KeyProblem("--jwt-algorithm HS256 needs --jwt-secret")
            self._reload(force=True)

    @property
    def _path(self) -> Path | None:
        return self.settings.jwt_public_key or self.settings.jwks

    def _reload(self, force: bool = False) -> None:
        path = self._path
        if path is None:
            return
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError as exc:
            if force:
                raise KeyProblem(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
            return  # keep the keys we have; the file may be being replaced
        if not force and stamp == self._stamp:
            return
        with self._lock:
            try:
                if self.settings.jwt_public_key:
                    key, algorithm = load_public_key(path)
                    keys: dict[str | None, tuple[Any, str]] = {None: (key, algorithm)}
                else:
                    keys = load_jwks(path)
                wanted = self.settings.jwt_algorithm
                if wanted is not None and any(alg != wanted for _, alg in keys.values()):
                    raise KeyProblem(f"--jwt-algorithm {wanted} does not match the key(s) in {str(path)!r}")
            except KeyProblem as exc:
                if force:
                    raise
                log.error("key file changed but cannot be used, keeping the previous keys: %s", exc)
                self._stamp = stamp
                return
            if self._stamp is not None:
                log.info("key file %s reloaded (%d key(s))", path, len(keys))
            self._keys, self._stamp = keys, stamp

    def algorithms(self) -> set[str]:
        return {alg for _, alg in self._keys.values()}

    def check(self, token: str | None, tenant_id: str) -> Decision:
        settings = self.settings
        if not token:
            return Decision.deny(401, "token required (?token=<jwt> or Authorization: Bearer <jwt>)")
        if len(token) > 16 * 1024:
            return Decision.deny(401, "token is malformed (too long)")
        self._reload()
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError):  # ValueError: a token that is not even UTF-8
            return Decision.deny(401, "token is malformed")
        algorithm = header.get("alg")
        expected = sorted(self.algorithms())
        if not isinstance(algorithm, str) or algorithm not in expected:
            return Decision.deny(401, f"token algorithm is not accepted (expected {' or '.join(expected)})")
        kid = header.get("kid")
        if len(self._keys) == 1 and None in self._keys:
            key, key_alg = self._keys[None]
        elif isinstance(kid, str) and kid in self._keys:
            key, key_alg = self._keys[kid]
        elif kid is None and len(self._keys) == 1:
            key, key_alg = next(iter(self._keys.values()))
        else:
            return Decision.deny(401, "token key id (kid) is missing or unknown")
        if key_alg != algorithm:
            return Decision.deny(401, f"token algorithm is not accepted for this key (expected {key_alg})")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key_alg],
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                options={"require": ["exp"], "verify_aud": settings.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return Decision.deny(401, "token has expired")
        except jwt.ImmatureSignatureError:
            return Decision.deny(401, "token is not valid yet (nbf or iat in the future)")
        except jwt.InvalidSignatureError:
            return Decision.deny(401, "token signature is invalid")
        except jwt.InvalidAlgorithmError:
            return Decision.deny(401, f"token algorithm is not accepted (expected {key_alg})")
        except jwt.InvalidIssuerError:
            return Decision.deny(401, "token issuer (iss) is not accepted")
        except jwt.InvalidAudienceError:
            return Decision.deny(401, "token audience (aud) is not accepted")
        except jwt.MissingRequiredClaimError as exc:
            return Decision.deny(401, f"token has no {exc.claim!r} claim")
        except jwt.InvalidKeyError:
            return Decision.deny(401, "token cannot be checked with this server's key")
        except jwt.PyJWTError:
            return Decision.deny(401, "token is malformed")
        except (ValueError, TypeError, OverflowError):  # claims PyJWT does not expect, say
            return Decision.deny(401, "token is malformed")
        for name in NUMERIC_DATE_CLAIMS:
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return Decision.deny(401, f"token {name!r} claim must be a number (seconds since the epoch)")
        claim = settings.jwt_tenant_claim
        granted = claims.get(claim)
        if not isinstance(granted, str):
            return Decision.deny(403, f"token has no {claim!r} claim naming a tenant")
        if not hmac.compare_digest(granted.encode("utf-8", "surrogatepass"), tenant_id.encode("utf-8")):
            return Decision.deny(403, "token is not for this tenant")
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        return Decision.allow(expires_at=float(int(claims["exp"])), subject=subject)


@functools.lru_cache(maxsize=16)
def verifier(settings: Settings) -> Verifier:
    return Verifier(settings)


def decide(hook: Callable[..., Any], settings: Settings, request: Any, tenant_id: str, token: str | None) -> Decision:
    """The answer of ``hook`` (the ``cfgpush_authorize`` hook caller) for one subscriber: a
    plugin that raises refuses (503), never allows; no answer allows only while no JWT key is
    set."""
    try:
        decision = hook(settings=settings, request=request, tenant_id=tenant_id, token=token)
    except Exception:
        log.exception("cfgpush_authorize raised; refusing the subscriber of tenant %s", tenant_id)
        return Decision.deny(503, "authorization is unavailable; retry later")
    if decision is None:
        if auth_enabled(settings):
            return Decision.deny(401, "token cannot be checked: no authorization plugin answered")
        return Decision.allow()
    if not isinstance(decision, Decision):
        log.error("cfgpush_authorize returned %s, not a Decision; refusing", type(decision).__name__)
        return Decision.deny(503, "authorization is unavailable; retry later")
    return decision


# -- the built-in hook implementation -------------------------------------------------------------


@hookimpl(trylast=True)
def cfgpush_authorize(settings: Settings, request: HTTPServerRequest, tenant_id: str, token: str | None) -> Decision:
    if not auth_enabled(settings):
        return Decision.allow()
    try:
        check = verifier(settings)
    except KeyProblem as exc:
        log.error("authentication is misconfigured, refusing every subscriber: %s", exc)
        return Decision.deny(503, "authentication is misconfigured on this server")
    return check.check(token, tenant_id)


# -- tokens in requests and logs ------------------------------------------------------------------


def bearer(request: HTTPServerRequest) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def matches_any(given: str | None, expected: Iterable[str]) -> bool:
    """``given`` equals one of ``expected``, each compared in constant time (all of them)."""
    if given is None:
        return False
    given_bytes = given.encode("utf-8", "surrogatepass")
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(given_bytes, candidate.encode("utf-8"))
    return found


def token_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Tokens from a setting: None, one string (comma- or newline-separated), or several."""
    if not value:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    return tuple(t.strip() for item in items for t in re.split(r"[,\s]+", item) if t.strip())


# -- origins --------------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z|\[[0-9a-f:.]+\]\Z")


def _split_origin(text: str) -> tuple[str | None, str, int | None]:
    """``(scheme or None, host, port or None)`` of an origin or pattern, lowercased."""
    text = text.strip().lower().rstrip("/")
    scheme: str | None = None
    if "://" in text:
        scheme, _, text = text.partition("://")
    if any(c in text for c in "/?#@ "):
        raise ValueError("an origin has no path, query, user or spaces")
    host, port = text, None
    if text.startswith("["):  # IPv6 literal
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError("bad port")
            port = int(rest[1:])
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("bad port")
        port = int(port_text)
    if scheme is not None and port == _DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, host, port


def parse_origin(text: str) -> str:
    """One ``--allowed-origin``: ``https://app.example.com[:port]`` or ``[scheme://]*.example.com[:port]``.

    A pattern without a scheme admits https only (``origin_allowed``); ``http://*.example.com``
    must be written out.
    """
    original = text
    try:
        scheme, host, port = _split_origin(text)
    except ValueError as exc:
        raise ValueError(f"allowed origin {original!r}: {exc}") from None
    if scheme is not None and scheme not in ("http", "https"):
        raise ValueError(f"allowed origin {original!r}: the scheme must be http or https")
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if not _HOST_RE.match(name) or "*" in name:
        raise ValueError(f"allowed origin {original!r}: expected https://host[:port] or *.example.com")
    if wildcard and "." not in name:
        raise ValueError(
            f"allowed origin {original!r}: a pattern needs a domain of two labels at least (*.example.com, not *.com)"
        )
    if not wildcard and scheme is None:
        raise ValueError(f"allowed origin {original!r}: an exact origin needs its scheme (https://{host})")
    shown = (f"{scheme}://" if scheme else "") + host + (f":{port}" if port is not None else "")
    return shown


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated ``--allowed-origin`` values (the flag is repeatable)."""
    return tuple(dict.fromkeys(parse_origin(t) for t in text.split(",") if t.strip()))


def origin_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Whether the ``Origin`` header value matches one of the allowed origins or patterns."""
    try:
        scheme, host, port = _split_origin(origin)
    except ValueError:
        return False
    if scheme not in ("http", "https"):  # "null" (sandboxed pages, file://) never passes
        return False
    for pattern in patterns:
        p_scheme, p_host, p_port = _split_origin(pattern)
        # A pattern admits the scheme it names; without one, https only: a page served over
        # plain http can be rewritten by anyone on its network path, so admitting it must be
        # written out ("http://*.example.com").
        p_scheme = p_scheme or "https"
        if p_scheme != scheme:
            continue
        if p_port != port and not (p_port == _DEFAULT_PORTS[p_scheme] and port is None):
            continue
        if p_host.startswith("*."):
            if host.endswith(p_host[1:]) and len(host) > len(p_host) - 1:
                return True
        elif p_host == host:
            return True
    return False


def cross_site_refused(headers: Any, allowed_origins: Iterable[str]) -> bool:
    """Whether a request is from a browser page of another site that ``--allowed-origin``
    does not admit (403 ``Origin not allowed``). ``headers``: the request's (``get``).

    Tornado 6.6's cross-origin rule (what ``WebSocketHandler`` checks), on public values only:
    ``Sec-Fetch-Site: same-origin`` or ``none`` passes; without that header, a request without
    ``Origin`` (not a browser) or whose ``Origin`` names the ``Host`` passes; otherwise only
    an allowed origin does (``Sec-Fetch-Site: cross-site`` with ``Origin`` equal to ``Host``
    included: a DNS-rebinding page)."""
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site in ("same-origin", "none"):
        return False
    origin = headers.get("Origin")
    if fetch_site is None:
        if origin is None:
            return False
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # "http://[": not a URL, so no site's; only an allowed origin passes
            netloc = None
        if netloc is not None and netloc.lower() == headers.get("Host", "").lower():
            return False
    return not (origin and origin_allowed(origin, allowed_origins))


# -- hosts ----------------------------------------------------------------------------------------
#
# DNS rebinding: a hostile page at evil.example makes its name resolve to the server's address;
# the victim's browser then sends "Origin: http://evil.example" with "Host: evil.example", which
# is same-origin to every Origin check. Only the Host header tells such a request apart, so with
# --allowed-host the server answers only for the names it is reached by.


def _split_host(text: str) -> tuple[str, int | None]:
    """``(host, port or None)`` of a Host header value or an ``--allowed-host``, lowercased,
    without the trailing dot of a fully qualified name (the same name)."""
    if "://" in text:
        raise ValueError("a host has no scheme")
    _, host, port = _split_origin(text)
    if host.endswith(".") and not host.startswith("["):
        host = host[:-1]
    return host, port


def parse_host(text: str) -> str:
    """One ``--allowed-host``: ``cfgpush.example.com``, ``*.example.com``, ``10.0.0.5`` or
    ``[::1]``, each with ``:port`` or not (without one, any port is served)."""
    original = text
    try:
        host, port = _split_host(text)
    except ValueError as exc:
        raise ValueError(f"allowed host {original!r}: {exc}") from None
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if not _HOST_RE.match(name) or "*" in name:
        raise ValueError(f"allowed host {original!r}: expected a host name or address, or *.example.com")
    if wildcard and "." not in name:
        raise ValueError(
            f"allowed host {original!r}: a pattern needs a domain of two labels at least (*.example.com, not *.com)"
        )
    return host + (f":{port}" if port is not None else "")


def parse_hosts(text: str) -> tuple[str, ...]:
    """Comma-separated ``--allowed-host`` values (the flag is repeatable)."""
    return tuple(dict.fromkeys(parse_host(t) for t in text.split(",") if t.strip()))


def host_allowed(host_header: str | None, patterns: Iterable[str]) -> bool:
    """Whether a ``Host`` header value names one of the allowed hosts or patterns."""
    if not host_header:
        return False
    try:
        host, port = _split_host(host_header)
    except ValueError:
        return False
    for pattern in patterns:
        p_host, p_port = _split_host(pattern)
        if p_port is not None and p_port != port:
            continue
        if p_host.startswith("*."):
            if host.endswith(p_host[1:]) and len(host) > len(p_host) - 1:
                return True
        elif p_host == host:
            return True
    return False


def host_refusal(request: HTTPServerRequest, allowed_hosts: Iterable[str]) -> str | None:
    """Why ``request`` is not answered for its ``Host`` header (the caller answers 421), or
    None when it is. Without ``--allowed-host`` every host is answered, as before."""
    allowed_hosts = tuple(allowed_hosts)
    if not allowed_hosts or host_allowed(request.headers.get("Host"), allowed_hosts):
        return None
    return "this server does not answer for the host named in the Host header (--allowed-host)"


# -- Tornado's own log lines ----------------------------------------------------------------------

# Tornado errors that quote what the client sent after a fixed text: the text is kept, the
# value withheld (tornado/httputil.py, tornado/http1connection.py).
_VALUE_AFTER = (
    "Invalid header name",
    "Invalid header value",
    "Invalid Host header",
    "Multiple host headers not allowed",
    "Invalid query string",
    "Multiple unequal Content-Lengths",
    "Only integer Content-Length is allowed",
    "Unsupported Transfer-Encoding",
    "invalid gzip data",
)
_LEADING_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9 ,-]*")


def describe_input_error(error: object) -> str:
    """Tornado's message for a request it could not parse, without any value from the request:
    ``Invalid header value 'Bearer <token>\\x01'`` becomes ``Invalid header value (value withheld)``."""
    text = str(error)
    for prefix in _VALUE_AFTER:
        if text.startswith(prefix):
            return prefix + (" (value withheld)" if text[len(prefix) :].strip(" :") else "")
    found = _LEADING_WORDS.match(text)  # a message we do not know: its leading words only
    kept = found.group(0).rstrip(" ,-") if found else ""
    return (kept or "malformed request") + (" (value withheld)" if len(kept) < len(text.strip()) else "")


class MalformedRequestRedactor(logging.Filter):
    """Tornado refuses a request it cannot parse (400) inside its HTTP/1 connection, before any
    handler of ours, and logs ``Malformed HTTP message from <peer>: <error>`` on
    ``tornado.general``, where the error quotes the bad header: ``Authorization: Bearer <admin
    token>\\x01`` put the token in the log. This filter rewrites the error part of that line
    (``describe_input_error``); the peer and the kind of error stay, for whoever reads the log.
    """

    MESSAGE = "Malformed HTTP message from %s: %s"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE and isinstance(record.args, tuple) and len(record.args) == 2:
            record.args = (record.args[0], describe_input_error(record.args[1]))
        return True


def _install_malformed_request_redactor() -> None:
    """On Tornado's logger itself, so it holds whatever handlers logging has (the CLI's, pytest's,
    an embedding application's). Installed when this module is imported: every cfgpush server
    imports it (its handlers do) before it serves a request. Idempotent."""
    logger = logging.getLogger("tornado.general")
    if not any(isinstance(f, MalformedRequestRedactor) for f in logger.filters):
        logger.addFilter(MalformedRequestRedactor())


_install_malformed_request_redactor()


# -- flag parsers (cli.py's SETTING_FLAGS) --------------------------------------------------------


def parse_algorithm(text: str) -> str:
    value = text.strip().upper()
    if value not in ALGORITHMS:
        raise ValueError(f"JWT algorithm must be one of {', '.join(ALGORITHMS)}, not {text!r}")
    return value


def parse_claim(text: str) -> str:
    if not CLAIM_RE.match(text.strip()):
        raise ValueError(f"JWT tenant claim must be a claim name (letters, digits, _ . : / -), not {text!r}")
    return text.strip()


def parse_jwt_secret(text: str) -> str:
    text = text.strip()
    if len(text.encode("utf-8")) < HMAC_MIN_BYTES:
        raise ValueError(f"JWT secret must be at least {HMAC_MIN_BYTES} bytes (HS256)")
    return text


def parse_public_key_file(text: str) -> Path:
    path = Path(text.strip())
    try:
        load_public_key(path)
    except KeyProblem as exc:
        raise ValueError(f"JWT public key: {exc}") from None
    return path


def parse_jwks_file(text: str) -> Path:
    path = Path(text.strip())
    try:
        load_jwks(path)
    except KeyProblem as exc:
        raise ValueError(f"JWKS: {exc}") from None
    return path


def parse_tokens(what: str, min_length: int = 8):
    def parse(text: str) -> tuple[str, ...]:
        tokens = token_list(text)
        if not tokens:
            raise ValueError(f"{what} must not be empty")
        short = [t for t in tokens if len(t) < min_length]
        if short:
            raise ValueError(f"each {what} must be at least {min_length} characters")
        return tuple(dict.fromkeys(tokens))

    return parse
