"""``chatd-admin``: accounts and bans in a chatd database, server stopped or running.

    chatd-admin [--data-dir DIR] create NAME [--password-file FILE] [--min-password BYTES]
    chatd-admin [--data-dir DIR] reset-password NAME [--password-file FILE] [--min-password BYTES]
    chatd-admin [--data-dir DIR] bans [--room ROOM] [--mutes]
    chatd-admin [--data-dir DIR] unban ROOM NAME

The database is ``DIR/chatd.sqlite3`` (``--data-dir`` as given to
``twistd chatd``; ``create`` makes it if it is not there yet).  It may be
in use by a running server: SQLite's WAL lets both read, and every write
here is one short transaction that waits up to
:data:`BUSY_TIMEOUT_MS` for the server's.  A running server that keeps
accounts or bans in memory sees a change when it next reads them.

A password is read from ``--password-file`` (its first line), else from
the terminal without echo (asked twice), else from the first line of
standard input.  It is hashed (Argon2id) before anything is written, and
never printed nor logged.

Exit status: 0 done, 1 refused (the sentence says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
import time
from typing import IO, Sequence

from chatd import messages
from chatd.accounts.names import is_account_name
from chatd.accounts.passwords import DEFAULT_MIN_PASSWORD, default_argon, hash_blocking, password_problem
from chatd.accounts.records import AccountRecord, Restriction
from chatd.stores.history import HistoryError, SQLiteHistory

#: The database's file name in ``--data-dir`` (chatd.tap.DATABASE_NAME;
#: importing the server's start-up module here would cost a second each run).
DATABASE_NAME = "chatd.sqlite3"

#: How long a write waits for a running server's transaction, in milliseconds.
BUSY_TIMEOUT_MS = 5000

_ROOM = re.compile(r"#[A-Za-z0-9_-]{1,48}")


class Refused(Exception):
    """The command cannot be done; the text says why (never a password)."""


class AdminStore(SQLiteHistory):
    """The server's store, waiting longer for locks: nobody waits on this
    process the way every user waits on the server's reactor."""

    def _attach(self, wait_ms: int) -> None:
        super()._attach(max(wait_ms, BUSY_TIMEOUT_MS))
        self._connection().execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def read_password(name: str, password_file: str | None, stdin: IO[str] | None = None) -> str:
    """The new password of ``name``: from the file, the terminal or standard input."""
    stream = stdin if stdin is not None else sys.stdin
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8", newline="") as handle:
                return _first_line(handle.read())
        except (OSError, UnicodeDecodeError) as problem:
            raise Refused(f"cannot read the password file {password_file}: {getattr(problem, 'strerror', None) or 'not UTF-8'}") from None
    if stream.isatty():
        first = getpass.getpass(f"Password for {name}: ")
        again = getpass.getpass("Again: ")
        if first != again:
            raise Refused("the two passwords differ: nothing changed")
        return first
    return _first_line(stream.read())


def _first_line(text: str) -> str:
    """The text up to its first line end (``\\n`` or ``\\r\\n``)."""
    line = text.split("\n", 1)[0]
    return line[:-1] if line.endswith("\r") else line


def _open(data_dir: str, create: bool = False) -> AdminStore:
    path = os.path.join(data_dir, DATABASE_NAME)
    if not os.path.isdir(data_dir):
        raise Refused(f"no directory {data_dir}")
    if not create and not os.path.exists(path):
        raise Refused(f"no chatd database at {path}")
    return AdminStore(path)


def _hash_for(name: str, password: str, min_password: int) -> str:
    problem = password_problem(password, name, min_password)
    if problem is not None:
        raise Refused(f"{messages.WEAK_PASSWORD}: {problem}")
    return hash_blocking(default_argon(), password)


def create(store: AdminStore, name: str, password: str, min_password: int) -> AccountRecord:
    """Register the account ``name``."""
    if not is_account_name(name):
        raise Refused(f"{messages.INVALID_USERNAME}: {name!r} is not a valid account name")
    if store.load_account(name) is not None:
        raise Refused(f"{messages.NAME_TAKEN}: {name} is an account already")
    record = AccountRecord(name, _hash_for(name, password, min_password), messages.format_timestamp(time.time()))
    if not store.create_account(record):
        raise Refused(f"{messages.NAME_TAKEN}: {name} is an account already")
    return record


def reset_password(store: AdminStore, name: str, password: str, min_password: int) -> AccountRecord:
    """Give the account ``name`` a new password."""
    record = store.load_account(name)
    if record is None:
        raise Refused(f"no account named {name}")
    updated = record.with_hash(_hash_for(record.name, password, min_password))
    store.save_account(updated)
    return updated


def ban_lines(bans: list[Restriction], now: float) -> list[str]:
    """One tab-separated line per ban or mute that still holds: room,
    name, end (``-``: none), by, comment."""
    lines = []
    for ban in bans:
        if not ban.active(now):
            continue
        until = "-" if ban.expires is None else messages.format_timestamp(ban.expires)
        lines.append("\t".join((ban.room, ban.name, until, ban.by or "-", ban.comment)))
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd-admin", description="Accounts and bans in a chatd database.")
    parser.add_argument("--data-dir", default=".", help=f"the server's --data-dir (holding {DATABASE_NAME}); default: .")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (("create", "register an account"), ("reset-password", "give an account a new password")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name")
        sub.add_argument("--password-file", help="read the password from the first line of this file")
        sub.add_argument("--min-password", type=int, default=DEFAULT_MIN_PASSWORD, help="shortest password, in bytes of UTF-8")
    bans = commands.add_parser("bans", help="list the bans (or mutes) that hold now")
    bans.add_argument("--room", help="only this room's")
    bans.add_argument("--mutes", action="store_true", help="list mutes instead of bans")
    unban = commands.add_parser("unban", help="lift a ban")
    unban.add_argument("room")
    unban.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Run one command; the exit status."""
    out = stdout if stdout is not None else sys.stdout
    options = _parser().parse_args(argv)
    try:
        return _run(options, stdin, out)
    except Refused as problem:
        print(f"chatd-admin: {problem}", file=sys.stderr)
        return 1
    except HistoryError as problem:
        print(f"chatd-admin: {problem}", file=sys.stderr)
        return 1


def _run(options: argparse.Namespace, stdin: IO[str] | None, out: IO[str]) -> int:
    command: str = options.command
    if command in ("create", "reset-password"):
        name: str = options.name
        if command == "create" and not is_account_name(name):
            raise Refused(f"{messages.INVALID_USERNAME}: {name!r} is not a valid account name")
        store = _open(options.data_dir, create=command == "create")
        try:
            # Refused before a password is asked for, when it can be.
            exists = store.load_account(name) is not None
            if exists == (command == "create"):
                raise Refused(f"{messages.NAME_TAKEN}: {name} is an account already" if exists else f"no account named {name}")
            password = read_password(name, options.password_file, stdin)
            if command == "create":
                record = create(store, name, password, options.min_password)
                print(f"Account {record.name} created in {store.path}", file=out)
            else:
                record = reset_password(store, name, password, options.min_password)
                print(f"Password of {record.name} reset", file=out)
        finally:
            store.close()
        return 0
    store = _open(options.data_dir)
    try:
        if command == "bans":
            room = options.room
            found = store.load_mutes(room) if options.mutes else store.load_bans(room)
            for line in ban_lines(found, time.time()):
                print(line, file=out)
            return 0
        if _ROOM.fullmatch(options.room) is None:
            raise Refused(f"{messages.INVALID_ROOM}: {options.room!r} is not a room name")
        if store.remove_ban(options.room, options.name):
            print(f"Ban of {options.name} in {options.room} lifted", file=out)
        else:
            print(f"No ban of {options.name} in {options.room}", file=out)
        return 0
    finally:
        store.close()


def run() -> None:
    """The ``chatd-admin`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
