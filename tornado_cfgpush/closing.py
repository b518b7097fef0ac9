"""Why a subscriber's connection ends: one enum for every way out, and what each way means.

A connection ends through one path (``Subscription.close(reason)``, handlers/subscription.py):
it leaves the hub, which counts the reason (``cfgpush_connection_closes_total{reason}``, and
the older ``cfgpush_slow_client_disconnects_total`` / ``cfgpush_heartbeat_closes_total``), gives
its connection slot back, and asks its sink to close. The table below is the only place that
says, per reason, the WebSocket close code and text, what becomes of the socket after the close
frame, and whether an SSE stream ends cleanly (a final chunk) or is dropped. Connections
closed for a broken frame (1002, 1007, 1008, 1009) got their close frame, with the specific
text, from the protocol core (ws/protocol.py) already.
"""

from __future__ import annotations

import enum

from .ws.frames import CloseCode


class Linger(enum.Enum):
    """What a WebSocket does after its close frame."""

    WAIT = "wait"  # the close handshake: wait (ws/connection.py's CLOSE_TIMEOUT) for the peer's frame
    FLUSH = "flush"  # close TCP once what is buffered is out; the peer's answer does not matter
    ABORT = "abort"  # drop the socket now: the peer is silent


class CloseReason(enum.Enum):
    """``(metric label, WebSocket close code, close text, Linger, SSE stream ends cleanly)``."""

    # The client closed: its close frame (echoed), end of stream, a reset, a failed send.
    PEER_CLOSED = ("peer_closed", None, "", Linger.FLUSH, False)
    # Shutdown: reconnect elsewhere and resume.
    GOING_AWAY = ("going_away", CloseCode.GOING_AWAY, "server shutting down", Linger.FLUSH, True)
    # The token expired without a Refresh; an SSE stream ends (reconnect with a new token).
    TOKEN_EXPIRED = ("token_expired", CloseCode.POLICY_VIOLATION, "token expired", Linger.WAIT, True)
    # The unsent backlog passed --max-backlog-bytes: the close frame queues behind the
    # backlog, and the socket (with its backlog) is dropped if the peer does not answer in time.
    TOO_SLOW = ("too_slow", CloseCode.TRY_AGAIN_LATER, "client too slow", Linger.WAIT, False)
    # No frame from the client for --heartbeat-timeout.
    HEARTBEAT_TIMEOUT = ("heartbeat_timeout", CloseCode.NORMAL, "heartbeat timeout", Linger.ABORT, False)
    # The broker could not be asked for the catch-up: reconnect later.
    BROKER_UNAVAILABLE = (
        "broker_unavailable",
        CloseCode.TRY_AGAIN_LATER,
        "broker unavailable, reconnect later",
        Linger.WAIT,
        True,
    )
    # A bug on our side while serving this connection (logged with its traceback).
    INTERNAL_ERROR = ("internal_error", CloseCode.INTERNAL_ERROR, "internal server error", Linger.FLUSH, False)
    # Frames the protocol core refused: it has queued the close frame, with the specific text.
    # Over its frame budget a client may have more frames in flight: the server reads nothing
    # more and gives it time to read the close frame (closing now would reset the connection).
    RATE_LIMITED = ("rate_limited", CloseCode.POLICY_VIOLATION, "rate limit exceeded", Linger.WAIT, False)
    PROTOCOL_ERROR = ("protocol_error", CloseCode.PROTOCOL_ERROR, "protocol error", Linger.FLUSH, False)
    INVALID_DATA = ("invalid_data", CloseCode.INVALID_DATA, "invalid data", Linger.FLUSH, False)
    MESSAGE_TOO_BIG = ("message_too_big", CloseCode.MESSAGE_TOO_BIG, "message too big", Linger.FLUSH, False)

    def __init__(self, label: str, code: CloseCode | None, text: str, linger: Linger, sse_clean: bool):
        self.label = label  # of cfgpush_connection_closes_total
        self.code = code  # None: nothing to send, the peer is gone or closed first
        self.text = text
        self.linger = linger
        self.sse_clean = sse_clean

    @classmethod
    def of_failure(cls, code: int) -> CloseReason:
        """The reason of a frame the protocol core failed with ``code``."""
        return _FAILURES.get(code, cls.PROTOCOL_ERROR)


_FAILURES: dict[int, CloseReason] = {
    CloseCode.POLICY_VIOLATION: CloseReason.RATE_LIMITED,
    CloseCode.PROTOCOL_ERROR: CloseReason.PROTOCOL_ERROR,
    CloseCode.INVALID_DATA: CloseReason.INVALID_DATA,
    CloseCode.MESSAGE_TOO_BIG: CloseReason.MESSAGE_TOO_BIG,
}
