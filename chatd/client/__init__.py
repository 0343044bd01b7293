"""The terminal client, ``chatd-client`` (``python -m chatd.client``)."""
