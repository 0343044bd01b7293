"""ergo (the Go IRC server, github.com/ergochat/ergo) as a server of bench/fanout.py.

    .venv/bin/python bench/fanout.py --servers inspircd,ergo,chatd --ergo /work/ergo/bin/ergo

ergo is not in Debian: ``../shared/tools/build-ergo SRC OUT`` builds it
from a copy of its repository (the default binary here is
``/work/ergo/bin/ergo``; ``--ergo PATH`` or ``$ERGO`` for another).  It
is started as ``ergo run --conf ircd.yaml`` with a config generated
here (``ERGO_CONF``: a minimal one of our own, written after the keys
of ergo's ``default.yaml``; every key left out takes ergo's built-in
zero value, i.e. off):

- one plain TCP listener on 127.0.0.1 (no TLS, no websocket, no
  ``ergo mkcerts``);
- in-memory history on (``history.enabled``, channel buffers that grow
  up to 100,000 messages: no run evicts), nothing persistent;
- ``fakelag`` off, ``ip-limits`` counting and throttling off (thousands
  of connections from 127.0.0.1), login throttling and the metadata
  throttle off, a 64 MiB ``max-sendq`` (as InspIRCd's ``hardsendq``);
- accounts not required, nick reservation off (nicks ``u0``..``uN``
  register as guests), channel registration off, ``casemapping: ascii``
  (the build has no PRECIS), hostname lookups and ident off;
- idle timeouts of 10/20 minutes (the bulk clients never answer PING:
  InspIRCd's ``pingfreq`` is 600 s);
- its datastore (a buntdb file ergo creates at start) in the run's
  work directory; logging of level ``info`` to stderr, i.e. the server
  log in the work directory (InspIRCd's events log is kept alike).

ergo supports ``CAP REQ :echo-message``, the IRC dialect's request.
"""

from __future__ import annotations

import os

from common import SERVERS, Server

DEFAULT_BINARY = "/work/ergo/bin/ergo"

# Keys after ergo's default.yaml (2.x); see the module docstring for why each is set.
ERGO_CONF = """\
network:
    name: bench
server:
    name: bench.ergo.test
    listeners:
        "127.0.0.1:{port}": {{}}
    casemapping: "ascii"
    enforce-utf8: true
    lookup-hostnames: false
    forward-confirm-hostnames: false
    check-ident: false
    idle-timeouts:
        registration: 10m
        ping: 10m
        disconnect: 20m
    relaymsg:
        enabled: false
    max-sendq: 64M
    ip-limits:
        count: false
        throttle: false
    ip-cloaking:
        enabled: false
    oper-throttle: 0s
accounts:
    authentication-enabled: false
    registration:
        enabled: false
    login-throttling:
        enabled: false
    require-sasl:
        enabled: false
    nick-reservation:
        enabled: false
    multiclient:
        enabled: false
channels:
    default-modes: +nt
    max-channels-per-client: 1000
    registration:
        enabled: false
logging:
    -
        method: stderr
        type: "* -userinput -useroutput"
        level: info
lock-file: "{workdir}/ircd.lock"
datastore:
    path: "{workdir}/ircd.db"
    autoupgrade: true
languages:
    enabled: false
limits:
    nicklen: 32
    identlen: 20
    realnamelen: 150
    channellen: 64
    awaylen: 390
    kicklen: 390
    topiclen: 390
    monitor-entries: 100
    whowas-entries: 100
    chan-list-modes: 100
    registration-messages: 1024
    multiline:
        max-bytes: 4096
        max-lines: 100
fakelag:
    enabled: false
history:
    enabled: true
    channel-length: 100000
    client-length: 256
    autoresize-window: 3d
    autoreplay-on-join: 0
    chathistory-maxmessages: 1000
    znc-maxmessages: 2048
    restrictions:
        expire-time: 1w
        query-cutoff: 'none'
        grace-period: 1h
    persistent:
        enabled: false
metadata:
    enabled: false
"""


class Ergo(Server):
    """ergo (``--ergo PATH``; default ``$ERGO`` or ``DEFAULT_BINARY``), with ``ERGO_CONF``."""

    name = "ergo"
    protocol = "irc"
    binary = os.environ.get("ERGO", DEFAULT_BINARY)

    def config(self) -> str:
        """The generated config's text."""
        return ERGO_CONF.format(port=self.port, workdir=self.workdir)

    def command(self) -> list[str]:
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"no ergo binary at {self.binary}: build one with "
                               f"../shared/tools/build-ergo SRC OUT and pass --ergo OUT")
        path = os.path.join(self.workdir, "ircd.yaml")
        with open(path, "w") as handle:
            handle.write(self.config())
        return [self.binary, "run", "--conf", path]


SERVERS[Ergo.name] = Ergo  # a server kind of bench/fanout.py (and of any benchmark that imports this module)
