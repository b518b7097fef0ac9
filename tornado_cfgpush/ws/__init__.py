"""WebSocket (RFC 6455, RFC 7692) after the handshake.

* ``frames``: ``Opcode``, ``CloseCode``, building server frames, unmasking client payloads;
* ``deflate``: permessage-deflate negotiation, inflating client messages, compressing events;
* ``protocol``: ``ServerProtocol``, the sans-I/O core (bytes in; events and bytes out) with
  every RFC 6455 check a server must make and the per-connection frame budget;
* ``connection``: ``WebSocketConnection``, the thin ``asyncio.Protocol`` around the core
  (transport, flow control, close timer).

``frames``, ``deflate`` and ``protocol`` use no asyncio and no Tornado.
"""
