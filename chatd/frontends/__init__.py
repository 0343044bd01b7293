"""Front-ends: the wire protocols people connect with, on one hub.

``json`` is the JSON chat protocol over TCP and TLS (framing, the
connection protocol, the encoding of messages); ``websocket`` runs the
same JSON session over WebSocket; ``site`` serves it with the browser
client, ``/health`` and ``/metrics``.
"""
