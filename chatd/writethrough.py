"""Write-through for plain TCP: send at once when nothing is queued.

Twisted's TCP transport queues every ``write`` and sends it when the
reactor next finds the socket writable: for each write to an idle
connection that costs two ``epoll_ctl`` calls (watch for writable, stop
watching) and a reactor pass, on top of the ``send``.  In fan-out, where
every message is one write to each of hundreds of idle connections, that
overhead is most of the server's time.  C servers avoid it by trying the
``send`` first; this module does the same: when the transport holds no
unsent data, the bytes go straight to the socket, and only what the kernel
does not take is handed to ``transport.write`` (which then watches for
writability as usual, and applies back-pressure to producers).

It relies on ``twisted.internet.abstract.FileDescriptor``'s buffer
attributes (``dataBuffer``, ``offset``, ``_tempDataBuffer``); any other
transport (TLS, WebSocket, test transports) keeps plain ``write``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import tcp


def writer_for(transport: Any) -> Callable[[bytes], None]:
    """The fastest correct way to write to ``transport``."""
    sock = getattr(transport, "socket", None)
    if type(transport) is not tcp.Server or sock is None or not hasattr(transport, "_tempDataBuffer"):
        return transport.write  # type: ignore[no-any-return]
    send = sock.send
    write = transport.write

    def write_through(data: bytes) -> None:
        if (
            transport._tempDataBuffer
            or len(transport.dataBuffer) > transport.offset
            or transport.disconnecting
            or not transport.connected
        ):
            write(data)  # something is queued: keep the order, queue too
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            write(data)  # let the transport see the error and close
            return
        if sent < len(data):
            write(data[sent:])

    return write_through
