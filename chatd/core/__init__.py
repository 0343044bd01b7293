"""The chat core: the hub (sessions, rooms, fan-out) built from parts,
the single node's parts, the session layer every front-end shares, and
the per-connection limits.

It knows no wire format; front-ends (``chatd.frontends``) speak to it.
"""
