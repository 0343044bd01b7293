"""Command-line options, the service tree and the twistd plugin."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatd.tap import Options, makeService

from tests.support import stored


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def listening(*args: str) -> list[tuple[int, str]]:
    """(port, interface) of each listener makeService starts."""
    reactor = MemoryReactor()
    service = makeService(parse(*args), reactor=reactor)
    service.startService()
    try:
        return [(port, interface) for port, _factory, _backlog, interface in reactor.tcpServers]
    finally:
        service.stopService()


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["endpoints"], ["tcp:9998"])
        config = options.config()
        self.assertEqual(config.framing, "auto")
        self.assertEqual(config.pace, 0.025)
        self.assertEqual(config.history_on_login, 100)
        self.assertEqual(config.max_request, 16384)
        self.assertEqual(config.login_timeout, 60.0)
        self.assertEqual(options["max-message"], 2000)

    def test_every_option(self) -> None:
        options = parse(
            "--framing", "classic", "--pace", "40", "--history-on-login", "all",
            "--max-message", "500", "--max-request", "4096", "--login-timeout", "5",
        )
        config = options.config()
        self.assertEqual(config.framing, "classic")
        self.assertAlmostEqual(config.pace, 0.040)
        self.assertIsNone(config.history_on_login)
        self.assertEqual(config.max_request, 4096)
        self.assertEqual(config.login_timeout, 5.0)
        self.assertEqual(options["max-message"], 500)

    def test_port_number_is_tcp(self) -> None:
        self.assertEqual(parse("--port", "1234")["endpoints"], ["tcp:1234"])

    def test_port_endpoint_string(self) -> None:
        self.assertEqual(parse("--port", "tcp:1234:interface=127.0.0.1")["endpoints"], ["tcp:1234:interface=127.0.0.1"])

    def test_listen_replaces_default_port(self) -> None:
        self.assertEqual(parse("--listen", "tcp:1:interface=127.0.0.1", "--listen", "tcp:2")["endpoints"], ["tcp:1:interface=127.0.0.1", "tcp:2"])

    def test_port_and_listen(self) -> None:
        self.assertEqual(parse("--port", "5", "--listen", "tcp:6")["endpoints"], ["tcp:5", "tcp:6"])

    def test_bad_values(self) -> None:
        for args in (
            ["--framing", "fancy"],
            ["--pace", "fast"],
            ["--pace", "-1"],
            ["--history-on-login", "some"],
            ["--history-on-login", "-1"],
            ["--max-message", "0"],
            ["--max-request", "x"],
            ["--login-timeout", "-5"],
        ):
            self.assertRaises(usage.UsageError, parse, *args)

    def test_help_documents_every_option(self) -> None:
        text = str(Options())
        for name in ("--port", "--listen", "--framing", "--pace", "--history-on-login", "--max-message", "--max-request", "--login-timeout"):
            self.assertIn(name, text)


class MakeServiceTests(SynchronousTestCase):
    def test_port_9998(self) -> None:
        self.assertEqual(listening("--port", "9998"), [(9998, "")])

    def test_default_port(self) -> None:
        self.assertEqual(listening(), [(9998, "")])

    def test_repeated_listen(self) -> None:
        self.assertEqual(
            listening("--listen", "tcp:7001:interface=127.0.0.1", "--listen", "tcp:7002"),
            [(7001, "127.0.0.1"), (7002, "")],
        )

    def test_listeners_share_one_hub(self) -> None:
        reactor = MemoryReactor()
        service = makeService(parse("--listen", "tcp:7001", "--listen", "tcp:7002"), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        factories = [factory for _port, factory, _backlog, _interface in reactor.tcpServers]
        self.assertEqual(len(factories), 2)
        self.assertIs(factories[0].hub, factories[1].hub)

    def test_options_reach_the_factory(self) -> None:
        reactor = MemoryReactor()
        service = makeService(parse("--port", "7001", "--max-message", "7", "--pace", "10"), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        factory = reactor.tcpServers[0][1]
        self.assertEqual(factory.hub.max_message, 7)
        self.assertAlmostEqual(factory.config.pace, 0.010)
        self.assertIs(factory.clock, reactor)

    def test_each_service_tree_has_its_own_hub(self) -> None:
        reactor = MemoryReactor()
        for _ in range(2):
            makeService(parse("--port", "7001"), reactor=reactor).startService()
        first, second = (factory for _port, factory, _backlog, _interface in reactor.tcpServers)
        self.assertIsNot(first.hub, second.hub)


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("chatd", makers)
        maker = makers["chatd"]
        self.assertIsInstance(maker.options(), Options)
        self.assertIs(maker.makeService, makeService)


class ExitStatusTests(SynchronousTestCase):
    """A stop requested by SIGTERM or SIGINT is a clean exit (status 0)."""

    def test_stop_signal_cleared(self) -> None:
        import signal

        from chatd.tap import ChatService

        for number in (signal.SIGTERM, signal.SIGINT):
            reactor = MemoryReactor()
            reactor._exitSignal = number  # type: ignore[attr-defined]
            service = ChatService(reactor)
            service.startService()
            service.stopService()
            self.assertIsNone(reactor._exitSignal)  # type: ignore[attr-defined]

    def test_other_signals_kept(self) -> None:
        import signal

        from chatd.tap import ChatService

        reactor = MemoryReactor()
        reactor._exitSignal = signal.SIGHUP  # type: ignore[attr-defined]
        service = ChatService(reactor)
        service.startService()
        service.stopService()
        self.assertEqual(reactor._exitSignal, signal.SIGHUP)  # type: ignore[attr-defined]


class HistoryOptionTests(SynchronousTestCase):
    def data_dir(self) -> str:
        import os

        path = self.mktemp()
        os.makedirs(path)
        return path

    def start(self, *args: str) -> tuple[object, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        service = makeService(parse("--port", "7001", *args), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return reactor.tcpServers[0][1], reactor

    def test_sqlite_is_the_default(self) -> None:
        import os

        from chatd.stores.history import SQLiteHistory

        directory = self.data_dir()
        factory, _ = self.start("--data-dir", directory)
        self.assertIsInstance(factory.hub.history.store, SQLiteHistory)
        self.assertTrue(os.path.exists(os.path.join(directory, "chatd.sqlite3")))

    def test_default_data_dir_is_the_working_directory(self) -> None:
        self.assertEqual(parse()["data-dir"], ".")

    def test_memory(self) -> None:
        from chatd.stores.history import MemoryHistory

        factory, _ = self.start("--history", "memory")
        self.assertIsInstance(factory.hub.history.store, MemoryHistory)

    def test_missing_data_dir_is_created(self) -> None:
        import os

        directory = os.path.join(self.data_dir(), "a", "b")
        self.start("--data-dir", directory)
        self.assertTrue(os.path.exists(os.path.join(directory, "chatd.sqlite3")))

    def test_corrupt_database_stops_with_a_clear_line(self) -> None:
        import os

        directory = self.data_dir()
        with open(os.path.join(directory, "chatd.sqlite3"), "wb") as handle:
            handle.write(b"garbage" * 1000)
        error = self.assertRaises(SystemExit, makeService, parse("--data-dir", directory), MemoryReactor())
        self.assertIn("not a database", str(error.code))
        self.assertTrue(str(error.code).startswith("chatd: "))

    def test_restart_keeps_history(self) -> None:
        directory = self.data_dir()
        reactor = MemoryReactorClock()
        service = makeService(parse("--port", "7001", "--data-dir", directory), reactor=reactor)
        service.startService()
        hub = reactor.tcpServers[0][1].hub
        for text in ("one", "two"):
            hub.history.store.append("#lobby", "bob", text, hub.now())
        service.stopService()  # commits what is pending, closes the store
        factory, _ = self.start("--data-dir", directory)
        self.assertEqual([m.text for m in stored(factory.hub)], ["one", "two"])
        self.assertEqual(factory.hub.history.store.append("#lobby", "bob", "three", "t").id, 3)

    def test_retention_prunes_on_a_timer(self) -> None:
        factory, reactor = self.start("--history", "memory", "--history-retention", "2")
        hub = factory.hub
        for text in ("a", "b", "c", "d"):
            hub.history.store.append("#lobby", "bob", text, hub.now())
        hub.history.store.commit()
        reactor.advance(600)
        self.assertEqual([m.text for m in stored(hub)], ["c", "d"])

    def test_bad_history_options(self) -> None:
        for args in (["--history", "redis"], ["--history-retention", "forever"], ["--history-retention", "0"]):
            self.assertRaises(usage.UsageError, parse, *args)

    def test_fsync_flag(self) -> None:
        factory, _ = self.start("--data-dir", self.data_dir(), "--fsync")
        self.assertTrue(factory.hub.history.store.fsync)
