"""The chat core: the hub (users, rooms, fan-out) and per-connection limits.

It knows no wire format; front-ends (``chatd.frontends``) speak to it.
"""
