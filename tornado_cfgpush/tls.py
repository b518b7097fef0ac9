"""TLS for ``cfgpush-serve``: the server's ``SSLContext``, and its certificate rotated without a restart.

Certificate managers (certbot, cert-manager, Caddy, a Vault agent) replace the certificate and
key files in place, and expect the server to pick them up. ``CertificateReloader`` polls the two
files' metadata every ``interval`` seconds, off the event loop (a network file system can block
a ``stat``); when either changed it builds a fresh context from them, also off the loop, and
new handshakes use it from then on. Connections already open keep the session they have.

How a new context reaches new handshakes: the listening socket's context is built once, at start,
and its SNI callback (which OpenSSL calls for every ClientHello, with or without a server name)
moves each new connection to the current context (``SSLObject.context``: the certificate and
key are taken from it). So Tornado's ``HTTPServer`` is given one context for its life, and
nothing of it is replaced behind its back.

A new pair that does not load (a key that does not match the certificate, half-written files
during a non-atomic rotation) is logged, and the previous pair stays in use; the files are tried
again whenever they change again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger("cfgpush.tls")

# TLS 1.2 and 1.3 only. For TLS 1.2 the suites with forward secrecy and authenticated
# encryption (Mozilla's "intermediate" profile, less the DHE suites few clients still need);
# TLS 1.3's suites are all of that kind and keep OpenSSL's defaults.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TLSError(ValueError):
    """A certificate/key pair that cannot be used; the message names the files and the cause."""


def make_context(certfile: Path, keyfile: Path | None = None, password: str | None = None) -> ssl.SSLContext:
    """A server context for ``certfile`` (its chain, leaf first) and ``keyfile`` (None: the key
    is in ``certfile``); ``TLSError`` when they cannot be read or do not belong together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS_TLS12)
    # No TLS compression (CRIME), no renegotiation (a client-driven CPU cost), a fresh ECDH
    # key per handshake.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    shown = f"{certfile}" + (f" and {keyfile}" if keyfile else "")
    try:
        context.load_cert_chain(certfile, keyfile, password=password.encode() if password else None)
    except FileNotFoundError as exc:
        raise TLSError(f"cannot read {exc.filename or shown}: no such file") from None
    except PermissionError as exc:
        raise TLSError(f"cannot read {exc.filename or shown}: permission denied") from None
    except ssl.SSLError as exc:
        raise TLSError(f"{shown}: not a certificate and its private key ({_reason(exc)})") from None
    except OSError as exc:
        raise TLSError(f"cannot read {shown}: {exc.strerror or exc}") from None
    return context


def certificate_expiry(certfile: Path) -> float | None:
    """When the leaf certificate of ``certfile`` expires (Unix seconds), for
    ``cfgpush_tls_certificate_expiry_timestamp_seconds``; None when it cannot be read."""
    try:
        from cryptography import x509

        return x509.load_pem_x509_certificate(Path(certfile).read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, ValueError):
        return None


def _reason(exc: ssl.SSLError) -> str:
    reason = (exc.reason or str(exc)).replace("_", " ").lower()
    if "key values mismatch" in reason:
        return "the private key does not match the certificate"
    if "bad decrypt" in reason or "bad password" in reason:
        return "wrong --keyfile-password"
    return reason


def _signature(paths: tuple[Path, ...]) -> tuple:
    """What changes when a file is replaced or rewritten (a missing file: None in its place)."""
    found: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)  # follows symbolic links: Kubernetes swaps a link to a new folder
        except OSError:
            found.append(None)
        else:
            found.append((st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns))
    return tuple(found)


class CertificateReloader:
    """The listening context (``self.context``) and the pair new handshakes get."""

    def __init__(self, certfile: Path, keyfile: Path | None = None, password: str | None = None, interval: float = 5.0):
        self.certfile = certfile
        self.keyfile = keyfile
        self.password = password
        self.interval = interval
        self._paths = (certfile,) if keyfile is None else (certfile, keyfile)
        self._seen = _signature(self._paths)
        self.context = make_context(certfile, keyfile, password)  # raises TLSError: a start-up error
        self.not_after = certificate_expiry(certfile)  # of the pair in use
        self.context.sni_callback = self._choose
        self.current = self.context
        self.reloads = 0  # pairs loaded after the first
        self.failures = 0  # new pairs refused
        self._task: asyncio.Task | None = None

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            ssl_object.context = current

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check(loop)
            except Exception:  # never stop watching over one bad round
                log.exception("checking the TLS certificate files failed")

    async def check(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Load the pair if the files changed since last looked at; True when a new one is in use."""
        loop = loop or asyncio.get_running_loop()
        seen = await loop.run_in_executor(None, _signature, self._paths)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            context = await loop.run_in_executor(None, make_context, self.certfile, self.keyfile, self.password)
            not_after = await loop.run_in_executor(None, certificate_expiry, self.certfile)
        except TLSError as exc:
            self.failures += 1
            log.error("new TLS certificate not loaded, the previous one stays in use: %s", exc)
            return False
        self.current = context
        self.not_after = not_after
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.certfile)
        return True
