"""``python -m chatd.client``: the terminal client."""

from chatd.client.client import run

run()
