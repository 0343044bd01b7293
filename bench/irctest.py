#!/usr/bin/env python3
"""Run the public irctest suite against chatd (and ergo), PROTOCOL.md 7.6.

irctest (github.com/progval/irctest) is not a PyPI package and none of
its code goes into this repository: give this script the path of a
checkout and a Python that has irctest's requirements and pytest-timeout
installed (a venv of its own, not chatd's).  The chatd controller is
kept outside the repository: this script writes it into the checkout
(``irctest/controllers/chatd_controller.py``) at run time.  It starts::

    twistd -n --pidfile= chatd --history memory --data-dir <tmp>
        --port tcp:<J>:interface=127.0.0.1 --irc tcp:<I>:interface=127.0.0.1
        --irc-server-name My.Little.Server --accounts optional --min-password 1
        --register-rate 0 --operators <file> --max-per-ip 0 --msg-rate 0
        --irc-autojoin ''

leaving out the options the installed chatd does not know yet (accounts
come with issue 16), registers ``operuser`` and the accounts a test asks
for with JSON ``register`` on port J, and declares SASL PLAIN only when
the server has accounts.

Usage::

    python bench/irctest.py /work/irctest --python /work/irctest-venv/bin/python \\
        --servers chatd,ergo --ergo /work/ergo/bin/ergo

Each server's run keeps its JUnit XML and log in ``--results`` (default
``CHECKOUT/chatd-results``); the table per module, for every server whose
results are there, goes to ``bench/IRCTEST.md``.  ``--report-only``
rewrites the table from the kept results.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

#: The modules section 7.6 lists, in its order: each must pass fully (the
#: run covers the whole standard selection; these are marked in the table).
MODULES = (
    "pingpong",
    "join",
    "part",
    "quit",
    "names",
    "topic",
    "messages",
    "echo_message",
    "message_tags",
    "sasl",
    "cap",
    "connection_registration",
    "chathistory",
    "labeled_responses",
    "who",
    "kick",
    "invite",
    "away",
    "list",
)

#: The standard selection (section 7.6).
MARKERS = "not implementation-specific and not deprecated and not strict"

#: Seconds per test.
TIMEOUT = 30

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CONTROLLER = r'''
"""chatd's irctest controller, written by chatd's bench/irctest.py (not part of irctest)."""

import atexit
import json
import os
import signal
import socket
import subprocess
import time
from typing import List, Optional, Set, Type

from irctest.basecontrollers import BaseServerController, DirectoryBasedController, NotImplementedByController
from irctest.specifications import Capabilities, OptionalBehaviors

TWISTD = os.environ["CHATD_TWISTD"]
WANTED = [
    ("--history", "memory"),
    ("--irc-server-name", "My.Little.Server"),
    ("--accounts", "optional"),
    ("--min-password", "1"),
    ("--register-rate", "0"),
    ("--max-per-ip", "0"),
    ("--msg-rate", "0"),
    ("--irc-autojoin", ""),
]
_known: Optional[Set[str]] = None
_started: List[subprocess.Popen] = []


@atexit.register
def _stop_leftovers() -> None:
    """A server whose test never tore down (a setup that failed) is not left behind."""
    for proc in _started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


def known_options() -> Set[str]:
    """The options the installed chatd knows (from twistd chatd --help)."""
    global _known
    if _known is None:
        out = subprocess.run([TWISTD, "chatd", "--help"], capture_output=True, text=True).stdout
        _known = {word.split("=")[0].rstrip(",") for word in out.split() if word.startswith("--")}
    return _known


def json_request(port: int, request: dict) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(json.dumps({"request": "hello", "content": {"protocol": 2}}).encode() + b"\n")
        sock.sendall(json.dumps(request).encode() + b"\n")
        reader = sock.makefile("rb")
        while True:
            answer = json.loads(reader.readline())
            if answer.get("response") in ("info", "error", "pong"):
                return answer


class ChatdController(BaseServerController, DirectoryBasedController):
    software_name = "chatd"
    _port_wait_interval = 0.05
    supports_sts = False
    capabilities = frozenset(
        (
            Capabilities.ACCOUNT_TAG,
            Capabilities.AWAY_NOTIFY,
            Capabilities.BATCH,
            Capabilities.ECHO_MESSAGE,
            Capabilities.EXTENDED_JOIN,
            Capabilities.LABELED_RESPONSE,
            Capabilities.MESSAGE_TAGS,
            Capabilities.MULTI_PREFIX,
            Capabilities.SERVER_TIME,
        )
    )
    optional_behaviors = frozenset(
        (
            OptionalBehaviors.CAP_REQ_MINUS,
            OptionalBehaviors.MULTI_JOIN,
            OptionalBehaviors.MULTI_KICK,
            OptionalBehaviors.MULTI_PRIVMSG,
        )
    )

    @property
    def supported_sasl_mechanisms(self) -> Set[str]:  # type: ignore[override]
        return {"PLAIN"} if "--accounts" in known_options() else set()

    def run(self, hostname, port, *, password, ssl, run_services, faketime, websocket_hostname=None, websocket_port=None, **kwargs):
        if password is not None:
            raise NotImplementedByController("PASS (a server password)")
        if ssl:
            raise NotImplementedByController("TLS")
        if websocket_hostname is not None or websocket_port is not None:
            raise NotImplementedByController("Websocket")
        self.create_config()
        assert self.directory
        self.port = port
        operators = self.directory / "operators"
        operators.write_text("operuser\n")
        known = known_options()
        # The JSON port is ours to choose: on a shared machine another
        # process may take it between the choice and the bind, so a server
        # that could not start is started again on another one.
        for attempt in range(3):
            self.json_host, self.json_port = self.get_hostname_and_port()
            args = [TWISTD, "-n", "--pidfile=", "chatd", "--data-dir", str(self.directory),
                    "--port", f"tcp:{self.json_port}:interface=127.0.0.1",
                    "--irc", f"tcp:{port}:interface=127.0.0.1"]
            for option, value in WANTED:
                if option in known:
                    args += [option, value]
            if "--operators" in known:
                args += ["--operators", str(operators)]
            self.proc = self.execute(args, proc_name="chatd")
            _started.append(self.proc)
            try:
                if self._wait_json():
                    break
            except BaseException:
                self.kill_proc()
                raise
        else:
            raise RuntimeError("chatd did not start")
        try:
            if "--accounts" in known:
                self._register("operuser", "operpassword")
        except BaseException:
            self.kill_proc()
            raise

    def _wait_json(self):
        """True once chatd answers on its JSON port; False if it exited."""
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                answer = json_request(self.json_port, {"request": "ping", "content": None})
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            if answer.get("response") in ("pong", "info", "error"):
                return True
            time.sleep(0.05)
        raise RuntimeError("chatd's JSON port did not open")

    def _register(self, username, password):
        answer = json_request(self.json_port, {"request": "register", "content": {"username": username, "password": password}})
        if answer.get("response") == "error":
            if answer.get("code") in ("unknown_request", "forbidden"):
                raise NotImplementedByController("account registration")
            raise RuntimeError(f"register {username}: {answer}")

    def registerUser(self, case, username, password=None):
        if "--accounts" not in known_options():
            raise NotImplementedByController("account registration")
        self._register(username, password or "password")

    def wait_for_services(self):
        pass


def get_irctest_controller_class() -> Type[ChatdController]:
    return ChatdController
'''


def write_controller(checkout: Path) -> str:
    """Write the chatd controller into the checkout; its module name."""
    path = checkout / "irctest" / "controllers" / "chatd_controller.py"
    path.write_text(CONTROLLER.lstrip())
    return "irctest.controllers.chatd_controller"


def run_suite(server: str, checkout: Path, python: str, results: Path, ergo: str | None, twistd: str) -> Path:
    """One server's run of the standard selection; its JUnit XML."""
    env = dict(os.environ)
    if server == "chatd":
        controller = write_controller(checkout)
        env["CHATD_TWISTD"] = twistd
    elif server == "ergo":
        if not ergo:
            raise SystemExit("--ergo PATH is needed to run the suite against ergo")
        controller = "irctest.controllers.ergo"
        env["PATH"] = str(Path(ergo).resolve().parent) + os.pathsep + env.get("PATH", "")
    else:
        raise SystemExit(f"unknown server {server!r} (chatd or ergo)")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{server}.version").write_text(version_of(server, ergo, twistd))
    xml = results / f"{server}.xml"
    log = results / f"{server}.log"
    files = ["irctest/server_tests/"]
    command = [
        python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
        "--timeout", str(TIMEOUT), "--controller", controller, "-m", MARKERS,
        f"--junitxml={xml}", *files,
    ]
    print(f"irctest against {server}: {' '.join(command)}", flush=True)
    with open(log, "w") as out:
        subprocess.run(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    return xml


def version_of(server: str, ergo: str | None, twistd: str) -> str:
    """What was run: ergo's --version, or chatd's commit (``+`` with local changes)."""
    if server == "ergo":
        out = subprocess.run([str(ergo), "--version"], capture_output=True, text=True).stdout.strip()
        return out.splitlines()[0] if out else "ergo"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    return f"chatd {commit}{'+' if dirty else ''}"


def summarise(xml: Path) -> dict[str, dict[str, int]]:
    """Per module: passed, failed, errors, skipped (from JUnit XML)."""
    counts: dict[str, dict[str, int]] = {module: {"passed": 0, "failed": 0, "errors": 0, "skipped": 0} for module in MODULES}
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")
        # irctest.server_tests.<module>[.<submodule>].<Class>
        module = ".".join(parts[2:-1]) if len(parts) > 3 and parts[:2] == ["irctest", "server_tests"] else "?"
        row = counts.setdefault(module, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
        if case.find("failure") is not None:
            row["failed"] += 1
        elif case.find("error") is not None:
            row["errors"] += 1
        elif case.find("skipped") is not None:
            row["skipped"] += 1
        else:
            row["passed"] += 1
    return counts


def failures(xml: Path) -> list[str]:
    """The tests that failed or errored, by name."""
    names = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            names.append(f"{case.get('classname', '').split('.', 2)[-1]}::{case.get('name')}")
    return names


#: Failures outside section 7.6's modules that section 7 itself causes,
#: by test name prefix: why each is not a bug of chatd.
EXPLAINED = {
    "whois.ServicesWhoisTestCase::": (
        "the test logs in as account `val` with NICK `nick2` and WHOISes `nick2`; section 7.2 names "
        "a session authenticated as an account after the account (one namespace with JSON users), so "
        "the session is `val` and `nick2` is nobody (ergo lets a nick differ from its account)"
    ),
}


def _explained(test: str) -> str:
    for prefix, reason in EXPLAINED.items():
        if test.startswith(prefix):
            return f": {reason}"
    return ""


def _summary_line(log: Path) -> str:
    """pytest's last line (passed, xpassed, skipped...) from a run's log."""
    lines = [line for line in _read(log, "").splitlines() if " in " in line and ("passed" in line or "failed" in line)]
    return lines[-1].strip("= ") if lines else ""


def _read(path: Path, default: str) -> str:
    return path.read_text().strip() if path.exists() else default


def report(results: Path, out: Path, commit: str) -> None:
    """bench/IRCTEST.md: one table per module, a column group per server."""
    servers = [name for name in ("chatd", "ergo") if (results / f"{name}.xml").exists()]
    summaries = {name: summarise(results / f"{name}.xml") for name in servers}
    lines = [
        "# irctest results",
        "",
        f"The public irctest suite (github.com/progval/irctest at {commit}), standard selection",
        f"(`-m '{MARKERS}'`), {TIMEOUT} s per test, the modules of PROTOCOL.md section 7.6;",
        "run by `bench/irctest.py`. p = passed, f = failed, e = errors, s = skipped (by irctest itself,",
        "xfail included; an unexpected pass of an xfail counts as passed, as in the JUnit XML).",
        "The modules in bold are section 7.6's, which chatd must pass fully.",
        f"Written {datetime.date.today().isoformat()}. Servers: "
        + "; ".join(_read(results / f"{name}.version", name) for name in servers)
        + ".",
        "",
        "| module | " + " | ".join(f"{name} p/f/e/s" for name in servers) + " |",
        "|---|" + "---|" * len(servers),
    ]
    totals = {name: {"passed": 0, "failed": 0, "errors": 0, "skipped": 0} for name in servers}
    modules = list(MODULES) + sorted({m for s in summaries.values() for m in s} - set(MODULES))
    for module in modules:
        shown = f"**{module}**" if module in MODULES else module
        cells = []
        for name in servers:
            row = summaries[name].get(module, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
            for key in row:
                totals[name][key] += row[key]
            cells.append(f"{row['passed']}/{row['failed']}/{row['errors']}/{row['skipped']}")
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    lines.append(
        "| **total** | "
        + " | ".join(f"**{t['passed']}**/{t['failed']}/{t['errors']}/{t['skipped']}" for t in totals.values())
        + " |"
    )
    for name in servers:
        failed = failures(results / f"{name}.xml")
        lines += ["", f"## {name}: failed or errored ({len(failed)})", ""]
        summary = _summary_line(results / f"{name}.log")
        if summary:
            lines += [f"pytest: {summary}", ""]
        lines += [f"- `{test}`{_explained(test)}" for test in failed] or ["none"]
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="an irctest checkout")
    parser.add_argument("--python", default=sys.executable, help="a Python with irctest's requirements and pytest-timeout")
    parser.add_argument("--servers", default="chatd", help="comma-separated: chatd, ergo")
    parser.add_argument("--ergo", help="the ergo binary (for --servers ergo)")
    parser.add_argument("--twistd", default=str(REPO / ".venv" / "bin" / "twistd"), help="chatd's twistd")
    parser.add_argument("--results", type=Path, help="where runs keep their JUnit XML and logs [default: CHECKOUT/chatd-results]")
    parser.add_argument("--out", type=Path, default=HERE / "IRCTEST.md")
    parser.add_argument("--report-only", action="store_true")
    options = parser.parse_args()
    checkout = options.checkout.resolve()
    if not (checkout / "irctest" / "server_tests").is_dir():
        raise SystemExit(f"{checkout} is not an irctest checkout")
    if options.results is None:
        options.results = checkout / "chatd-results"
    if not options.report_only:
        probe = subprocess.run([options.python, "-c", "import pytest_timeout"], capture_output=True)
        if probe.returncode:
            raise SystemExit(f"{options.python} lacks pytest-timeout (pip install pytest-timeout into irctest's venv)")
        for server in options.servers.split(","):
            run_suite(server.strip(), checkout, options.python, options.results, options.ergo, options.twistd)
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report(options.results, options.out, commit or "an unknown commit")


if __name__ == "__main__":
    main()
