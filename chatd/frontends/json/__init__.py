"""The JSON chat protocol: the stream decoder and output framings
(``framing``) and one connection (``protocol``)."""
