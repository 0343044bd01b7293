"""``twistd chatd``: command-line options and the service tree.

Like twisted.words' tap and magic-wormhole's server_tap: :class:`Options`
parses the command line, :func:`makeService` wires a hub, a factory and
one listening service per endpoint into a ``MultiService``.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
from typing import Any, Callable

from twisted.application import service, strports
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from chatd.listening import with_backlog
from chatd.accounts.service import AccountService, AccountWriter
from chatd.accounts.throttle import IAuthThrottle
from chatd.fds import fit_connections
from chatd.logs import json_observer
from chatd.stores.history import HistoryError, HistoryStore, MemoryHistory, Retention, SQLiteHistory
from chatd.core.hub import Hub
from chatd.server import ChatFactory, HistoryService, ServerConfig, ShutdownService
from chatd.twisted_compat import forget_exit_signal

DEFAULT_PORT = 9998

log = Logger()


def _number(name: str, kind: type, minimum: float, what: str = "a whole number") -> Any:
    """A converter for ``--name``: a ``kind`` (int or float) of at least ``minimum``."""

    def convert(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be {what}, not {value!r}") from None
        if number < minimum:
            raise usage.UsageError(f"--{name} must be at least {minimum:g}" if minimum else f"--{name} cannot be negative")
        return number

    return convert


def _positive_int(name: str) -> Any:
    return _number(name, int, 1)


def _non_negative_int(name: str) -> Any:
    return _number(name, int, 0)


def _non_negative(name: str, unit: str) -> Any:
    return _number(name, float, 0, f"a number of {unit}")


def _history_count(value: str) -> int | None:
    if value == "all":
        return None
    try:
        number = int(value)
    except ValueError:
        raise usage.UsageError(f"--history-on-login must be a number or 'all', not {value!r}") from None
    if number < 0:
        raise usage.UsageError("--history-on-login cannot be negative")
    return number


def _framing(value: str) -> str:
    if value not in ("auto", "lines", "classic"):
        raise usage.UsageError("--framing must be auto, lines or classic")
    return value


def _irc_autojoin(value: str) -> tuple[str, ...]:
    from chatd.core.rooms import ROOM_NAME

    rooms = tuple(room.strip() for room in value.split(",") if room.strip())
    for room in rooms:
        if ROOM_NAME.fullmatch(room) is None:
            raise usage.UsageError(f"--irc-autojoin: {room!r} is not a room name (# and 1 to 48 letters, digits, _ or -)")
    return rooms


def _cluster_url(value: str) -> str:
    from chatd.cluster.link import parse_url

    try:
        parse_url(value)
    except ValueError as problem:
        raise usage.UsageError(str(problem)) from None
    return value


def _log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise usage.UsageError("--log-format must be text or json")
    return value


def _history_kind(value: str) -> str:
    if value not in ("sqlite", "memory"):
        raise usage.UsageError("--history must be sqlite or memory")
    return value


def _retention(value: str) -> Retention:
    try:
        return Retention.parse(value)
    except ValueError as problem:
        raise usage.UsageError(f"--history-retention: {problem}") from None


#: The database file under the data directory.
DATABASE_NAME = "chatd.sqlite3"


def port_to_endpoint(port: str) -> str:
    """``--port``: a bare number means ``tcp:N``; anything else is an endpoint."""
    return f"tcp:{port}" if port.isdigit() else port


def _choice(option: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise usage.UsageError(f"--{option} must be one of {', '.join(allowed)}, not {value!r}")
        return value

    return parse


class Options(usage.Options):
    """Command-line options of ``twistd chatd``."""

    synopsis = "[options]"
    longdesc = (
        "Run the chatd chat server. Clients of the classic JSON chat protocol "
        "connect over TCP (default port 9998)."
    )

    optParameters = [
        ["port", "p", None, f"Port to listen on: a number (tcp:N) or an endpoint string [default: {DEFAULT_PORT}]."],
        ["framing", None, "auto", "Output framing: auto (detect per connection), lines or classic.", _framing],
        ["pace", None, 25.0, "Milliseconds between responses in classic framing.", _non_negative("pace", "milliseconds")],
        [
            "history-on-login",
            None,
            100,
            "Messages of history sent after login: a number or 'all'.",
            _history_count,
        ],
        ["max-message", None, 2000, "Longest message accepted, in characters.", _positive_int("max-message")],
        [
            "max-rooms-per-user",
            None,
            50,
            "Rooms one name may be in at once, #lobby not counted.",
            _positive_int("max-rooms-per-user"),
        ],
        ["accounts", None, "off", "Accounts with passwords: off, optional or required (section 6.4).", _choice("accounts", ("off", "optional", "required"))],
        ["registration", None, "open", "Who may register accounts: open, or closed (server operators only).", _choice("registration", ("open", "closed"))],
        ["register-rate", None, 3, "Accounts one address may register per 60 s (0: no limit).", _non_negative_int("register-rate")],
        ["min-password", None, 8, "Shortest password, in bytes of UTF-8.", _positive_int("min-password")],
        ["max-sessions", None, 8, "Sessions one account may have at once.", _positive_int("max-sessions")],
        ["operators", None, None, "A file of server operators' account names, one per line (needs --accounts)."],
        ["max-request", None, 16384, "Largest request accepted, in bytes.", _positive_int("max-request")],
        [
            "login-timeout",
            None,
            60.0,
            "Seconds a connection may stay without logging in (0: no limit).",
            _non_negative("login-timeout", "seconds"),
        ],
        [
            "idle-timeout",
            None,
            0.0,
            "Seconds a logged-in user may send nothing before being disconnected (0: no limit).",
            _non_negative("idle-timeout", "seconds"),
        ],
        ["msg-rate", None, 10.0, "Messages per second one connection may send (0: no limit).", _non_negative("msg-rate", "messages per second")],
        ["msg-burst", None, 20, "Messages one connection may send at once before the rate applies.", _positive_int("msg-burst")],
        [
            "request-rate",
            None,
            20.0,
            "Request budget: units per second one connection may spend; a request costs 1, plus a share per"
            " history row or name it returns (0: no limit).",
            _non_negative("request-rate", "units per second"),
        ],
        ["request-burst", None, 100, "Request budget units one connection may spend at once.", _positive_int("request-burst")],
        ["max-sendq", None, 1048576, "Bytes of unsent output after which a slow reader is disconnected (0: no limit).", _non_negative_int("max-sendq")],
        ["max-per-ip", None, 20, "Connections from one address (0: no limit; loopback is not exempt).", _non_negative_int("max-per-ip")],
        ["max-connections", None, 10000, "Connections in all (0: no limit).", _non_negative_int("max-connections")],
        ["web", None, None, "Serve the browser client, /ws, /health and /metrics on this endpoint (e.g. tcp:8080) [default: off]."],
        ["cluster", None, None, "Join a cluster of chatd nodes through Redis: redis://HOST:PORT/DB [default: single node].", _cluster_url],
        ["log-format", None, "text", "Log format: text, or json (one JSON object per line).", _log_format],
        ["irc-server-name", None, None, "The server's name on IRC [default: the host name]."],
        ["irc-autojoin", None, "#lobby", "Rooms every IRC session joins after the welcome, comma-separated; empty: none.", _irc_autojoin],
        ["irc-motd", None, None, "A file whose lines are the IRC message of the day [default: none, 422]."],
        ["history", None, "sqlite", "Where history is kept: sqlite (durable, the default) or memory.", _history_kind],
        ["data-dir", None, ".", f"Directory of the history database ({DATABASE_NAME})."],
        [
            "history-retention",
            None,
            None,
            "Keep at most this many messages per room (e.g. 100000), or this many days (e.g. 30d) [default: all].",
            _retention,
        ],
    ]

    optFlags = [
        ["fsync", None, "Sync every history commit to disk (survives a power cut; slower)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["web-origin"] = []
        self["irc"] = []

    def opt_irc(self, endpoint: str) -> None:
        """Serve IRC clients on a Twisted endpoint, e.g. tcp:6667 or ssl:6697:privateKey=key.pem (repeatable) [default: off]."""
        self["irc"].append(port_to_endpoint(endpoint))

    def opt_web_origin(self, origin: str) -> None:
        """Also accept WebSocket connections from pages of this origin, e.g. https://chat.example.org (repeatable)."""
        self["web-origin"].append(origin)

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted endpoint string, e.g. tcp:9998:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        endpoints = list(self["listen"])
        if self["port"] is not None or not endpoints:
            endpoints.insert(0, port_to_endpoint(str(self["port"] or DEFAULT_PORT)))
        self["endpoints"] = endpoints

    def config(self) -> ServerConfig:
        """The per-connection settings these options describe."""
        return ServerConfig(
            framing=self["framing"],
            pace=self["pace"] / 1000.0,
            history_on_login=self["history-on-login"],
            max_request=self["max-request"],
            login_timeout=self["login-timeout"],
            idle_timeout=self["idle-timeout"],
            msg_rate=self["msg-rate"],
            msg_burst=self["msg-burst"],
            request_rate=self["request-rate"],
            request_burst=self["request-burst"],
            max_sendq=self["max-sendq"],
            max_per_ip=self["max-per-ip"],
            max_connections=self["max-connections"],
            accounts=self["accounts"],
            registration=self["registration"],
            max_sessions=self["max-sessions"],
        )


def read_operators(path: str) -> frozenset[str]:
    """The lower-cased account names in an ``--operators`` file (blank
    lines and ``#`` comments skipped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as problem:
        raise SystemExit(f"chatd: cannot read --operators {path!r}: {problem}") from None
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.strip().startswith("#"))


def make_accounts(options: Options, store: AccountWriter, reactor: Any, throttle: IAuthThrottle | None = None) -> AccountService:
    """The account service over ``store`` (``--accounts`` on): the history
    store, or a cluster's; ``throttle`` defaults to this process's."""
    from chatd.accounts.passwords import Passwords
    from chatd.accounts.throttle import LocalThrottle

    if throttle is None:
        throttle = LocalThrottle(reactor, register_rate=options["register-rate"])
    return AccountService(store, Passwords(reactor), throttle, reactor, min_password=options["min-password"])


def room_options(options: Options) -> dict[str, Any]:
    """The hub's room settings the options give."""
    return {"max_rooms_per_user": options["max-rooms-per-user"], "history_on_join": options["history-on-login"]}


def open_history(options: Options) -> HistoryStore:
    """The history store the options ask for.

    The SQLite database is opened here, so that a bad path or a corrupt
    file stops ``twistd`` with one clear line before it daemonizes; it is
    closed again and reopened by the service once running.
    """
    if options["history"] == "memory":
        return MemoryHistory()
    data_dir = os.path.abspath(options["data-dir"])
    try:
        os.makedirs(data_dir, exist_ok=True)
        store = SQLiteHistory(os.path.join(data_dir, DATABASE_NAME), fsync=options["fsync"])
    except (OSError, HistoryError) as problem:
        raise SystemExit(f"chatd: {problem}") from None
    store.close()
    return store


class ChatService(service.MultiService):
    """The top of chatd's service tree.

    Since Twisted 22.10 twistd re-raises the signal that stopped the
    reactor, so a server stopped by SIGTERM exits with status -15.  For
    chatd, SIGTERM/SIGINT are the normal, requested way to stop (systemd,
    containers), so a stop they caused is a clean exit with status 0.
    """

    def __init__(self, reactor: object, log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._log_observer = log_observer

    def setServiceParent(self, parent: service.IServiceCollection) -> None:
        # twistd starts logging with the application's ILogObserver
        # component, if it has one: that is how --log-format json applies.
        set_component = getattr(parent, "setComponent", None)
        if self._log_observer is not None and set_component is not None:
            set_component(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def stopService(self) -> Any:  # Any: MultiService's result (a Deferred), unannotated in Twisted
        forget_exit_signal(self._reactor, (signal.SIGTERM, signal.SIGINT))
        return super().stopService()


def freeze_start_up_objects() -> None:
    """Move every object alive now out of the cyclic collector's sight.

    Start-up leaves some 57,000 objects that live as long as the process
    (modules, classes, functions, the service tree); each full collection
    walked them all again, 15-30 ms with the reactor stopped (measured
    during the logins of 200 and 1,000 clients).  Frozen, they are still
    freed by reference counting if ever dropped, and a full collection
    walks only what the server made since.  Thresholds are left at
    Python's: no collection at all ran in a 5 s run at 200 msg/s to a
    room of 200 (the fan-out allocates nothing that lives), and raising
    them changed nothing measurable in the logins.
    """
    gc.collect()
    gc.freeze()


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """The chatd service tree: one listener per endpoint, all on one hub.

    Under twistd (no ``reactor`` given: the global one) the start-up
    objects are frozen once the reactor runs (:func:`freeze_start_up_objects`);
    a test passing its own reactor keeps its process's collector as it is.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        reactor.callWhenRunning(freeze_start_up_objects)
    cluster_store = None
    if options["cluster"]:
        from chatd.cluster.node import ClusterService, cluster_accounts, cluster_hub, cluster_throttle

        hub = cluster_hub(reactor, options["cluster"], max_message=options["max-message"], **room_options(options))
        accounts = None
        if options["accounts"] != "off":
            # Accounts, bans, memberships and the throttle in Redis, shared by every node.
            cluster_store = cluster_accounts(hub)
            throttle = cluster_throttle(hub, reactor, options["register-rate"])
            accounts = make_accounts(options, cluster_store, reactor, throttle)
    else:
        store = open_history(options)
        hub = Hub.local(reactor, store, max_message=options["max-message"], **room_options(options))
        accounts = make_accounts(options, store, reactor) if options["accounts"] != "off" else None
    operators = frozenset[str]()
    if options["operators"]:
        if accounts is None:
            raise SystemExit("chatd: --operators needs --accounts optional or required")
        operators = read_operators(options["operators"])
    if cluster_store is not None:
        from chatd.cluster.node import use_cluster_accounts

        use_cluster_accounts(hub, cluster_store, operators, options["max-sessions"])
    elif accounts is not None:
        hub.use_accounts(store, operators, options["max-sessions"])
    config = options.config()
    fits, files = fit_connections(config.max_connections)
    if fits != config.max_connections:
        log.warn(
            "open files are limited to {files}: the connection cap is {fits}, not {wanted}",
            files=files, fits=fits, wanted=config.max_connections or "unlimited",
        )
        config = dataclasses.replace(config, max_connections=fits)
    factory = ChatFactory(hub, config, reactor, accounts=accounts, operators=operators)
    observer = None
    if options["log-format"] == "json":
        observer = json_observer(getattr(options, "parent", None))
    top = ChatService(reactor, observer)
    # Stopped in reverse order: listeners, then users told and closed,
    # then history stored and closed.
    HistoryService(hub, options["history-retention"] or Retention(), reactor).setServiceParent(top)
    if options["cluster"]:
        ClusterService(hub, reactor).setServiceParent(top)
    ShutdownService(factory).setServiceParent(top)
    for endpoint in options["endpoints"]:
        try:
            listener = strports.service(with_backlog(endpoint), factory, reactor=reactor)
        except Exception as problem:  # a bad description, a missing key file, ...
            raise SystemExit(f"chatd: cannot listen on {endpoint!r}: {problem}") from None
        listener.setServiceParent(top)
    if options["web"]:
        from chatd.frontends.site import listen_address, make_web

        web = options["web"]
        endpoint = port_to_endpoint(web)
        # Where it listens decides which page origins may open /ws.
        port, interface = listen_address(endpoint)
        try:
            site = make_web(factory, options["web-origin"], port=port, interface=interface)
            strports.service(with_backlog(endpoint), site, reactor=reactor).setServiceParent(top)
        except Exception as problem:
            raise SystemExit(f"chatd: cannot serve the web on {web!r}: {problem}") from None
    if options["irc"]:
        listen_irc(options, factory, top, reactor)
    return top


def irc_accounts(factory: ChatFactory) -> dict[str, Any]:
    """The IRC front-end's account settings (SASL, PASS, OPER: section
    7.2) from the chat factory's account service; none with --accounts off."""
    from twisted.internet.defer import Deferred, maybeDeferred

    accounts = factory.accounts
    if accounts is None:
        return {}

    def check_for(host: str) -> Any:
        def check(name: str, password: str) -> Deferred[str]:
            return accounts.login(name, password, host).addCallback(lambda logged: logged.name)

        return check

    def exists(name: str) -> Deferred[bool]:
        return maybeDeferred(accounts.store.load_account, name).addCallback(lambda record: record is not None)

    return {
        "accounts": check_for,
        "account_exists": exists,
        "accounts_required": factory.config.accounts == "required",
        "operators": factory.operators,
    }


def listen_irc(options: Options, factory: ChatFactory, top: service.MultiService, reactor: Any) -> None:
    """The IRC front-end (``--irc``, section 7): its factory on the same
    hub and caps, one listener per endpoint, and its shutdown (stopped
    before the history service, after its listeners)."""
    from chatd.frontends.irc.factory import IRCConfig, IRCFactory, IRCShutdownService

    autojoin = options["irc-autojoin"]
    if isinstance(autojoin, str):  # the default is not passed through its coercer
        autojoin = _irc_autojoin(autojoin)
    settings: dict[str, Any] = {"autojoin": autojoin}
    if options["irc-server-name"]:
        settings["server_name"] = options["irc-server-name"]
    if options["irc-motd"]:
        try:
            with open(options["irc-motd"], encoding="utf-8", errors="replace") as motd:
                settings["motd"] = tuple(line.rstrip("\r\n") for line in motd)
        except OSError as problem:
            raise SystemExit(f"chatd: cannot read --irc-motd: {problem}") from None
    settings.update(irc_accounts(factory))
    irc = IRCFactory(factory, IRCConfig(**settings))
    IRCShutdownService(irc).setServiceParent(top)
    for endpoint in options["irc"]:
        try:
            strports.service(with_backlog(endpoint), irc, reactor=reactor).setServiceParent(top)
        except Exception as problem:
            raise SystemExit(f"chatd: cannot serve IRC on {endpoint!r}: {problem}") from None
