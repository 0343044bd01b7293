"""Several chatd nodes as one chat, through Redis (``--cluster``)."""
