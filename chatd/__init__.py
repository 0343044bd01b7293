"""chatd: a chat daemon built on Twisted."""
