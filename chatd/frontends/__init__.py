"""Front-ends: the wire protocols people connect with, on one hub.

``json`` is the JSON chat protocol over TCP and TLS (framing and the
connection protocol); ``site`` serves it over WebSocket too, with the
browser client, ``/health`` and ``/metrics``.
"""
