"""The model of accounts, sessions and moderation for tests/test_stateful.py.

PROTOCOL.md sections 6.3-6.5 restated for :class:`AccountsChatMachine
<tests.test_stateful.AccountsChatMachine>`, written from the spec and not
from the server, so that the two can disagree: account names and weak
passwords, the login throttle and the registration rate, several sessions
of one account, memberships that belong to the name, DMs kept for
accounts and delivered once, and the moderation requests with their
checks in section 6.5's order.

:class:`AccountWorld` holds the model and plans one request at a time
(:class:`Step`): the checks in order, the outcome applied to the model,
what every connection gets (counted, as :func:`account_signature` sees a
response), which connections the server closes and how many Argon2 calls
the request costs.

Where the spec leaves a choice open the model says which reading it
takes, in a comment starting "Reading:".  Behaviour the spec gives that
the server does not (yet) have is listed in :data:`KNOWN_BUGS`: the
machine does not drive the model into those situations while a bug is
listed (see :meth:`AccountWorld.avoids`), and the model still says what
the spec wants there, so removing a name from the set is all a fix needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tests.stateful_rooms import LOBBY, NEW_MODES, clean_topic, conversation, is_room_name, is_valid_name
from tests.support import FakeClient

#: The server operator (``--operators``), mostly registered when the machine starts.
OPERATOR = "root"
#: ``--max-sessions``: small, so that the limit is reached.
MAX_SESSIONS = 3
#: ``--max-rooms-per-user``.
MAX_ROOMS = 3
#: ``--register-rate``.
REGISTER_RATE = 2
#: ``--min-password`` (bytes of UTF-8).
MIN_PASSWORD = 8
#: The longest password, in bytes of UTF-8.
MAX_PASSWORD_BYTES = 1024
#: ``auth_failed`` answers in WINDOW seconds that make a login ``rate_limited``.
LOGIN_FAILURES = 5
WINDOW = 60.0
LOGIN_TIMEOUT = 60.0
#: ``--history-on-login``, which a ``join`` sends too.
HISTORY_ON_LOGIN = 100
#: ``--max-message`` in this machine.
MAX_MESSAGE = 40
#: A kick's or ban's comment is cut to this many code points.
MAX_COMMENT = 390
#: The undelivered DMs of one conversation sent at login.
UNDELIVERED_PAGE = 100

#: A JSON username (section 4): what a login without a password gives.
USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")

#: Server bugs found by this machine (see the module docstring and the
#: report): the machine steers clear of each while it is listed.
#:
#: - ``dm_to_v1_account``: a DM from an account to an account whose
#:   sessions are all v1 gets ``no_such_user``; section 6.3 makes that
#:   account offline, so the DM is accepted and kept for its next login.
#: - ``v1_first_rejoin``: a v2 session of an account whose first session
#:   is v1 logs in while another v2 session is in the rooms: that other v2
#:   session gets every room's ``join`` answers (info and history) again.
#: - ``ghost_member``: the last v2 session of an account ends while v1
#:   sessions remain: nobody is told and the name stays listed in its
#:   rooms; once the v1 sessions end too it stays listed for good (no
#:   ``presence`` ``offline``, ``members`` and ``names`` list it).
#: - ``lobby_ban_offline``: a ``#lobby`` ban of a name that is not online
#:   sends ``presence`` ``offline`` (``reason`` ``banned``) to everyone,
#:   for a name that was never there.
#: - ``part_comment_self``: a ``part`` with a comment by one session of a
#:   name with several: its other sessions get ``presence`` ``offline`` for
#:   their own name (without a comment they rightly get none).
#: - ``lobby_mute_roomless``: a name muted in ``#lobby`` still posts there
#:   with a ``msg`` that names no room (every v1 client's): only
#:   ``"room": "#lobby"`` gets ``muted``.
#: - ``guest_operator``: while the account of a name in ``--operators`` is
#:   not registered, a guest may log in under that name and is taken for a
#:   server operator (kicks and bans from #lobby, op everywhere, exempt
#:   from bans); a ``deop`` of the name is ``forbidden``.  Section 6.5:
#:   server operators are the *accounts* listed.
KNOWN_BUGS: frozenset[str] = frozenset({"v1_first_rejoin", "ghost_member"})

#: The moderation requests, and the fields each takes besides ``room``.
MODERATION: dict[str, tuple[str, ...]] = {
    "kick": ("user", "comment"),
    "ban": ("user", "comment", "duration"),
    "unban": ("user",),
    "mute": ("user", "duration"),
    "unmute": ("user",),
    "op": ("user",),
    "deop": ("user",),
    "voice": ("user",),
    "devoice": ("user",),
    "mode": (),
    "invite": ("user",),
}
MODE_FLAGS = tuple(NEW_MODES)
#: Requests that change a role, and what they set.
ROLE_CHANGES: dict[str, tuple[str, bool]] = {"op": ("op", True), "deop": ("op", False), "voice": ("voice", True),
                                             "devoice": ("voice", False)}
ROLE_VERBS = {"op": "Opped", "deop": "Deopped", "voice": "Voiced", "devoice": "Devoiced"}
#: Requests whose target must be a listed member of the room.
TARGET_IS_MEMBER = frozenset({"kick", "mute", "op", "deop", "voice", "devoice"})

#: What a response is, for counting: see :func:`account_signature`.
Signature = tuple[Any, ...]


# -- the rules of names and passwords --------------------------------------


def is_account_name(name: object) -> bool:
    """Whether ``name`` may name an account (section 6.4)."""
    return isinstance(name, str) and is_valid_name(name)


def encoded(password: str) -> bytes:
    """A password's UTF-8."""
    return password.encode("utf-8", "surrogatepass")


def too_long(password: str) -> bool:
    """Over 1024 bytes of UTF-8: never hashed."""
    return len(encoded(password)) > MAX_PASSWORD_BYTES


def weak(password: str, name: str) -> bool:
    """``weak_password`` (section 6.4): too short, too long, U+0000, or the name."""
    data = encoded(password)
    return (
        too_long(password) or "\x00" in password or len(data) < MIN_PASSWORD
        or data.lower() == name.encode("ascii").lower()
    )


def address_key(host: str) -> str:
    """The address a client counts under: IPv4 mapped into IPv6 counts as IPv4."""
    host = host.lower()
    return host[len("::ffff:"):] if host.startswith("::ffff:") and "." in host else host


def clean_comment(comment: Any) -> str:
    """A kick's or ban's comment, cleaned like a topic and cut (section 6.5)."""
    return clean_topic(comment).strip()[:MAX_COMMENT] if isinstance(comment, str) else ""


# -- signatures ------------------------------------------------------------


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    return value


#: Keys of the envelope, not of what an ``info`` says.
_ENVELOPE = ("timestamp", "sender", "response", "content", "ref")


def _ids(entries: list[Any]) -> tuple[int, ...]:
    from tests.stateful_rooms import entry_of

    return tuple(entry_of(entry)["id"] for entry in entries)


def account_signature(response: dict[str, Any]) -> Signature:
    """What a response is, exactly enough to count it: its type, what it
    says that the model decides, and (last) whether it carries a ``ref``."""
    kind = response["response"]
    ref = "ref" in response
    content = response.get("content")
    if kind == "error":
        return ("error", response.get("code"), ref)
    if kind == "message":
        if "to" in response:
            return ("dm", response["sender"], response["to"], response["id"], bool(response.get("offline")), ref)
        return ("message", response.get("room"), response["sender"], response["id"], ref)
    if kind == "history":
        entries = response["content"]
        if "with" in response:
            return ("history_with", response["with"], _ids(entries), response.get("more"), ref)
        return ("history", response.get("room"), _ids(entries), ref)
    if kind == "info" and "members" in response:
        return joined_sig(response["room"], response["members"], response["ops"], response["voiced"], response["modes"],
                          response["topic"], ref)
    if kind == "info":
        extra = {key: value for key, value in response.items() if key not in _ENVELOPE}
        return ("info", content, _hashable(extra), ref)
    if kind in ("presence", "mode", "invite"):
        return (kind, _hashable(content), ref)
    return (kind, ref)


def info_sig(text: str, ref: bool = False, **extra: Any) -> Signature:
    """An ``info`` with ``text`` and these keys."""
    return ("info", text, _hashable(extra), ref)


def joined_sig(room: str, members: list[str], ops: list[str], voiced: list[str], modes: dict[str, bool], topic: str,
               ref: bool = False) -> Signature:
    """A ``join``'s ``info``: "Joined #Dev" with the room's state."""
    return ("joined", room, tuple(members), tuple(ops), tuple(voiced), _hashable(modes), topic, ref)


def error_sig(code: str, ref: bool = False) -> Signature:
    """An ``error`` with ``code``."""
    return ("error", code, ref)


def presence_sig(user: str, status: str, room: str, **extra: Any) -> Signature:
    """A ``presence`` (``reason``, ``by``, ``comment`` when given)."""
    return ("presence", _hashable({"user": user, "status": status, "room": room, **extra}), False)


def event_sig(kind: str, **content: Any) -> Signature:
    """A ``mode`` or ``invite`` event."""
    return (kind, _hashable(content), False)


# -- the model ---------------------------------------------------------------


@dataclass(eq=False)
class Conn:
    """The model of one connection."""

    client: FakeClient
    host: str
    v2: bool
    timer_from: float  # when the login timeout started (connect, logout)
    name: str | None = None  # the canonical name, once logged in
    account: bool = False  # logged in with a password


@dataclass
class Account:
    """A registered account."""

    name: str  # as registered
    password: str
    previous: str | None = None  # the password before the last change
    rooms: list[str] = field(default_factory=list)  # keys, in the order joined: kept while offline
    kept: dict[str, list[int]] = field(default_factory=dict)  # conversation -> ids of the DMs kept for it
    marks: dict[str, int] = field(default_factory=dict)  # conversation -> newest id a v2 session got


@dataclass
class Name:
    """A name that has sessions now."""

    name: str  # canonical
    account: bool
    sessions: list[Conn]  # in login order, the first first
    rooms: list[str] = field(default_factory=list)  # a guest's rooms (an account's: Account.rooms)
    invited: set[str] = field(default_factory=set)  # room keys: lapse with the last session


@dataclass
class RoomState:
    """A room other than ``#lobby`` (never deleted)."""

    name: str  # the creator's spelling
    listed: list[str] = field(default_factory=list)  # lower-cased names, in the order they entered
    ops: set[str] = field(default_factory=set)
    voiced: set[str] = field(default_factory=set)
    modes: dict[str, bool] = field(default_factory=lambda: dict(NEW_MODES))
    stored: list[int] = field(default_factory=list)

    @property
    def public(self) -> bool:
        """Neither secret nor invite-only."""
        return not self.modes["secret"] and not self.modes["invite_only"]


@dataclass(eq=False)
class Step:
    """One request, planned: what to send, and what it causes."""

    sender: Conn
    request: dict[str, Any]
    ref: bool  # whether the request carries a ref (its answers then do)
    expected: dict[Conn, list[Signature]] = field(default_factory=dict)
    closes: set[Conn] = field(default_factory=set)  # connections the server closes
    hashes: int = 0  # Argon2 hashes and verifications it runs
    error: str | None = None

    def tell(self, conn: Conn, *signatures: Signature) -> None:
        """``conn`` gets these responses."""
        self.expected.setdefault(conn, []).extend(signatures)

    def answer(self, *signatures: Signature) -> None:
        """The sender gets these answers (with its ref)."""
        self.tell(self.sender, *signatures)


class AccountWorld:
    """The model of a server with ``--accounts optional`` and one server
    operator, and the planning of each request against it."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.accounts: dict[str, Account] = {}
        # Names with sessions, by lower-cased name, in the order they
        # entered #lobby (a name that leaves and comes back goes last).
        self.online: dict[str, Name] = {}
        self.rooms: dict[str, RoomState] = {}
        self.lobby: list[int] = []  # ids of #lobby's messages
        self.bans: dict[tuple[str, str], float | None] = {}  # (room key, name key) -> when it ends
        self.mutes: dict[tuple[str, str], float | None] = {}
        self.dms: dict[str, list[tuple[int, str]]] = {}  # conversation -> (id, sender), every DM
        self.failures: dict[str, list[float]] = {}  # "host:" / "name:" + key -> times of auth_failed
        self.registrations: dict[str, list[float]] = {}  # address -> times
        # Every password of 8 bytes or more a request carried (none may be
        # stored anywhere in plaintext), but those that could be a name
        # (which are stored as names).
        self.passwords_seen: set[str] = set()

    def saw(self, *passwords: Any) -> None:
        """Note the passwords a request carries."""
        self.passwords_seen.update(
            p for p in passwords if isinstance(p, str) and len(encoded(p)) >= MIN_PASSWORD and not is_valid_name(p)
        )

    # -- who is who --------------------------------------------------------

    def now(self) -> float:
        """The clock, in POSIX seconds."""
        return float(self.clock.seconds())

    def active(self, ends: float | None) -> bool:
        """Whether a ban or mute ending at ``ends`` holds now."""
        return ends is None or self.now() < ends

    def in_window(self, times: list[float]) -> int:
        """How many of ``times`` lie in the last WINDOW seconds."""
        now = self.now()
        return sum(1 for moment in times if moment > now - WINDOW)

    def is_operator(self, lower: str) -> bool:
        """A server operator: an account listed in ``--operators`` (a name
        listed there that is not registered yet is nobody's)."""
        return lower == OPERATOR and OPERATOR in self.accounts

    def banned(self, key: str, lower: str) -> bool:
        """Whether a ban of the room holds ``lower`` (server operators are exempt)."""
        return not self.is_operator(lower) and (key, lower) in self.bans and self.active(self.bans[(key, lower)])

    def muted(self, key: str, lower: str) -> bool:
        """Whether ``lower``'s ``msg`` to the room gets ``muted`` (section 6.2)."""
        if self.is_operator(lower):
            return False
        if (key, lower) in self.mutes and self.active(self.mutes[(key, lower)]):
            return True
        if key == LOBBY:
            return False  # its modes are fixed; a name banned from it is not online
        room = self.rooms[key]
        return self.banned(key, lower) or (room.modes["moderated"] and lower not in room.ops | room.voiced)

    def v2_sessions(self, lower: str) -> list[Conn]:
        """The v2 sessions of a name (none: it is offline for DMs and rooms)."""
        holder = self.online.get(lower)
        return [conn for conn in holder.sessions if conn.v2] if holder is not None else []

    def sessions(self, lower: str) -> list[Conn]:
        """Every session of a name."""
        holder = self.online.get(lower)
        return list(holder.sessions) if holder is not None else []

    def rooms_of(self, lower: str) -> list[str]:
        """The rooms a name is in: an account's kept ones, a guest's own."""
        if lower in self.accounts:
            return self.accounts[lower].rooms
        holder = self.online.get(lower)
        return holder.rooms if holder is not None else []

    def canonical(self, lower: str) -> str:
        """A listed or online name as it is shown."""
        return self.online[lower].name

    def listed_names(self, room: RoomState) -> list[str]:
        """``members``: the room's listed names, in the order they entered."""
        return [self.canonical(lower) for lower in room.listed]

    def room_sessions(self, room: RoomState, but: str | None = None) -> list[Conn]:
        """The sessions in a room (v2 sessions of its listed names), but ``but``'s."""
        return [conn for lower in room.listed if lower != but for conn in self.v2_sessions(lower)]

    def lobby_v2(self, but: str | None = None) -> list[Conn]:
        """The v2 sessions in ``#lobby`` (they get its ``presence``), but ``but``'s."""
        return [conn for lower, holder in self.online.items() if lower != but for conn in holder.sessions if conn.v2]

    # Reading: a name is listed in its rooms (``members``, ``names``,
    # presence) while it has a v2 session.  Section 6 says membership
    # belongs to the name and v1 sessions see #lobby only; it does not say
    # whether an account whose only sessions are v1 is "in" its rooms.  The
    # server announces a name in its rooms with its first v2 session, so
    # its last v2 session ending is when it leaves them (see ghost_member).

    def joined_answer(self, room: RoomState, ref: bool) -> list[Signature]:
        """A ``join``'s answer: the room's info, then its newest messages."""
        names = self.listed_names(room)
        return [
            joined_sig(room.name, names, [n for n in names if n.lower() in room.ops],
                       [n for n in names if n.lower() in room.voiced], room.modes, "", ref),
            ("history", room.name, tuple(room.stored[-HISTORY_ON_LOGIN:]), ref),
        ]

    def lobby_joined(self, ref: bool) -> Signature:
        """The answer to a ``join`` of ``#lobby``.

        Reading: ``ops`` lists the names in the room's record; server
        operators are op in every room (section 6.5) but are listed only
        where someone opped them (the server does the same everywhere).
        """
        return joined_sig(LOBBY, [holder.name for holder in self.online.values()], [], [], NEW_MODES, "", ref)

    def avoids(self, bug: str) -> bool:
        """Whether the machine keeps clear of a known server bug."""
        return bug in KNOWN_BUGS

    # -- gates ---------------------------------------------------------------

    def gate(self, step: Step, v2_only: bool) -> bool:
        """``not_logged_in``, then ``forbidden`` for a v2 request without
        hello (section 6.7); True if the request got one."""
        if step.sender.name is None:
            return self.refuse(step, "not_logged_in")
        if v2_only and not step.sender.v2:
            return self.refuse(step, "forbidden")
        return False

    def refuse(self, step: Step, code: str) -> bool:
        """The request gets the error ``code`` and nothing else happens."""
        step.answer(error_sig(code, step.ref))
        step.error = code
        return True

    def step(self, sender: Conn, kind: str, content: Any, **extra: Any) -> Step:
        """A request from ``sender``; v2 connections send a ``ref``."""
        return Step(sender, {"request": kind, "content": content, **extra}, ref=sender.v2)

    # -- register, login, logout, password -----------------------------------

    def plan_register(self, conn: Conn, username: Any, password: Any) -> Step:
        """``register``: ``rate_limited``, ``invalid_username``,
        ``weak_password``, ``name_taken`` (section 6.4); it does not log in."""
        step = self.step(conn, "register", {"username": username, "password": password})
        self.saw(password)
        if not isinstance(username, str) or not isinstance(password, str):
            self.refuse(step, "bad_request")
            return step
        # A server operator logged in with its password may register beyond the rate.
        exempt = conn.account and str(conn.name).lower() == OPERATOR
        address = address_key(conn.host)
        if not exempt and self.in_window(self.registrations.get(address, [])) >= REGISTER_RATE:
            self.refuse(step, "rate_limited")
        elif not is_account_name(username):
            self.refuse(step, "invalid_username")
        elif weak(password, username):
            self.refuse(step, "weak_password")
        elif username.lower() in self.accounts or username.lower() in self.online:
            self.refuse(step, "name_taken")
        else:
            # Refused registrations give their place in the rate back.
            if not exempt:
                self.registrations.setdefault(address, []).append(self.now())
            self.accounts[username.lower()] = Account(username, password)
            step.hashes = 1
            step.answer(info_sig(f"Account {username} registered", step.ref))
        return step

    def plan_login(self, conn: Conn, name: Any, password: Any = None, with_password: bool = False) -> Step:
        """``login``, a guest's (no password) or an account's."""
        step = self.step(conn, "login", name, **({"password": password} if with_password else {}))
        self.saw(password)
        if with_password and not isinstance(password, str):
            self.refuse(step, "bad_request")
        elif conn.name is not None:
            self.refuse(step, "already_logged_in")
        elif not with_password:
            self.guest_login(step, name)
        else:
            self.account_login(step, name, password)
        return step

    def guest_login(self, step: Step, name: Any) -> None:
        """A login without a password: a guest, on a name no account has."""
        if not isinstance(name, str) or not USERNAME.fullmatch(name):
            self.refuse(step, "invalid_username")
        elif name.lower() == "server":
            self.refuse(step, "name_taken")
        elif name.lower() in self.accounts:
            self.refuse(step, "auth_failed")  # an account's name needs its password
        elif self.banned(LOBBY, name.lower()):
            self.refuse(step, "banned")
        elif name.lower() in self.online:
            self.refuse(step, "name_taken")
        else:
            self.enter(step, name, account=False)

    def account_login(self, step: Step, name: Any, password: str) -> None:
        """A login with a password: ``invalid_username``, ``rate_limited``
        (the throttle), ``auth_failed``, ``banned``, ``name_taken``,
        ``forbidden`` (``--max-sessions``)."""
        conn = step.sender
        if not is_account_name(name):
            self.refuse(step, "invalid_username")
            return
        lower = name.lower()
        by_address = self.failures.setdefault("host:" + address_key(conn.host), [])
        by_name = self.failures.setdefault("name:" + lower, [])
        # The throttle comes before any hashing; its refusals do not count.
        if self.in_window(by_address) >= LOGIN_FAILURES or self.in_window(by_name) >= LOGIN_FAILURES:
            self.refuse(step, "rate_limited")
            return
        account = self.accounts.get(lower)
        if account is not None and not too_long(password):
            step.hashes = 1  # a password over 1024 bytes is wrong without hashing
        if account is None or account.password != password:
            by_address.append(self.now())
            by_name.append(self.now())
            self.refuse(step, "auth_failed")
            return
        holder = self.online.get(lower)
        if self.banned(LOBBY, lower):
            self.refuse(step, "banned")
        elif holder is not None and not holder.account:
            self.refuse(step, "name_taken")  # a guest under it: cannot happen here (guests cannot take it)
        elif holder is not None and len(holder.sessions) >= MAX_SESSIONS:
            self.refuse(step, "forbidden")
        else:
            self.enter(step, account.name, account=True)

    def enter(self, step: Step, name: str, account: bool) -> None:
        """A successful login: the name's first session enters #lobby (the
        others are told), a further one joins it silently; a v2 session of
        an account gets its rooms, then its undelivered DMs (section 6.4)."""
        conn, lower = step.sender, name.lower()
        holder = self.online.get(lower)
        if holder is None:
            for other in self.lobby_v2():
                step.tell(other, presence_sig(name, "online", LOBBY))
            holder = self.online[lower] = Name(name, account, [conn])
        else:
            holder.sessions.append(conn)
        conn.name, conn.account = name, account
        step.answer(info_sig(f"Login successful. You are now logged in as {name}", step.ref),
                    ("history", None, tuple(self.lobby[-HISTORY_ON_LOGIN:]), step.ref))
        if not (account and conn.v2):
            return
        kept = self.accounts[lower]
        if any(other.v2 for other in holder.sessions if other is not conn):
            # Its name is in its rooms already: their answers again.
            for key in kept.rooms:
                step.answer(*self.joined_answer(self.rooms[key], step.ref))
        else:
            # The name comes back to its rooms as a join brings it in; a
            # room it was banned from while away is dropped, with the
            # join's error (reading: section 6.4 gives each room the answers
            # of a join, and a ban's later join gets banned).
            for key in list(kept.rooms):
                if self.banned(key, lower):
                    kept.rooms.remove(key)
                    step.answer(error_sig("banned", step.ref))
                    continue
                self.enter_room(step, self.rooms[key], lower)
                step.answer(*self.joined_answer(self.rooms[key], step.ref))
        for conv in sorted(kept.kept):
            mark = kept.marks.get(conv, 0)
            waiting = [i for i in kept.kept[conv] if i > mark]
            if waiting:
                page = waiting[:UNDELIVERED_PAGE]
                sender = dict(self.dms[conv])[page[0]]  # the other side: it sent them
                step.answer(("history_with", sender, tuple(page), len(waiting) > len(page), step.ref))
                kept.marks[conv] = page[-1]

    def enter_room(self, step: Step, room: RoomState, lower: str) -> None:
        """A name enters a room: op if nobody listed is op and no account
        holds op; the members are told; an invitation is used up."""
        present = set(room.listed)
        if not any(op in present or op in self.accounts for op in room.ops):
            room.ops.add(lower)
        for other in self.room_sessions(room):
            step.tell(other, presence_sig(self.canonical(lower), "online", room.name))
        room.listed.append(lower)
        self.online[lower].invited.discard(room.name.lower())

    def plan_logout(self, conn: Conn) -> Step:
        """``logout``: the session ends (see :meth:`end_session`)."""
        step = self.step(conn, "logout", None)
        if conn.name is None:
            self.refuse(step, "not_logged_in")
            return step
        self.end_session(step, conn)
        step.answer(info_sig("Logout successful", step.ref))
        return step

    def ghost(self, conn: Conn) -> bool:
        """Whether ``conn`` ending would leave its name listed in a room
        without a v2 session (ghost_member)."""
        if conn.name is None or not conn.v2:
            return False
        lower = conn.name.lower()
        others = [other for other in self.sessions(lower) if other is not conn]
        listed = any(lower in room.listed for room in self.rooms.values())
        return bool(others) and not any(other.v2 for other in others) and listed

    def ghost_when_closed(self, lower: str) -> bool:
        """Whether closing every session of a name (a kick or ban from
        #lobby) may hit ghost_member: the server closes them in some order,
        and a v1 one may be the last."""
        listed = any(lower in room.listed for room in self.rooms.values())
        return listed and any(not conn.v2 for conn in self.sessions(lower))

    def end_session(self, step: Step, conn: Conn) -> None:
        """``conn`` logs out or goes: a further session leaves without a
        word; the last one takes the name out of its rooms and #lobby."""
        assert conn.name is not None
        lower = conn.name.lower()
        holder = self.online[lower]
        holder.sessions.remove(conn)
        conn.name, conn.account = None, False
        conn.timer_from = self.now()
        if holder.sessions:
            if conn.v2 and not any(other.v2 for other in holder.sessions):
                self.leave_rooms(step, lower, holder.name)  # its last v2 session (see ghost_member)
            return
        self.leave_rooms(step, lower, holder.name)
        del self.online[lower]  # invitations lapse
        for other in self.lobby_v2():
            step.tell(other, presence_sig(holder.name, "offline", LOBBY))

    def leave_rooms(self, step: Step, lower: str, name: str) -> None:
        """The name leaves the rooms it is listed in (an account stays a
        member: they come back at its next login; a guest's end)."""
        for room in self.rooms.values():
            if lower in room.listed:
                room.listed.remove(lower)
                for other in self.room_sessions(room):
                    step.tell(other, presence_sig(name, "offline", room.name))
                if lower not in self.accounts:
                    room.ops.discard(lower)
                    room.voiced.discard(lower)
        if lower not in self.accounts and lower in self.online:
            self.online[lower].rooms = []

    def plan_password(self, conn: Conn, old: str, new: str) -> Step:
        """``password``: ``forbidden`` (a guest), ``weak_password`` (new over
        1024 bytes), ``auth_failed``, ``weak_password``."""
        step = self.step(conn, "password", {"old": old, "new": new})
        self.saw(old, new)
        if self.gate(step, v2_only=True):
            return step
        if not conn.account:
            self.refuse(step, "forbidden")
            return step
        account = self.accounts[str(conn.name).lower()]
        # Reading: a new password over 1024 bytes is weak_password before
        # any hashing, so before auth_failed (issue 16: "over 1,024 bytes
        # gets weak_password, before any hashing"; section 6.4's table puts
        # auth_failed first).
        if too_long(new):
            self.refuse(step, "weak_password")
            return step
        if not too_long(old):
            step.hashes = 1
        if old != account.password:
            self.refuse(step, "auth_failed")  # not counted by the login throttle
        elif weak(new, account.name):
            self.refuse(step, "weak_password")
        else:
            step.hashes = 2
            account.previous, account.password = account.password, new
            step.answer(info_sig("Password changed", step.ref))
        return step

    # -- rooms -----------------------------------------------------------------

    def plan_join(self, conn: Conn, room_name: str, as_object: bool) -> Step:
        """``join``: for the name, so its other v2 sessions get the answer too."""
        step = self.step(conn, "join", {"room": room_name} if as_object else room_name)
        if self.gate(step, v2_only=True):
            return step
        if not is_room_name(room_name):
            self.refuse(step, "invalid_room")
            return step
        key, lower = room_name.lower(), str(conn.name).lower()
        if key == LOBBY:
            step.answer(self.lobby_joined(step.ref))
            return step
        rooms = self.rooms_of(lower)
        room = self.rooms.get(key)
        if key in rooms:
            assert room is not None
            step.answer(self.joined_answer(room, step.ref)[0])  # already in it: the info only
            return step
        if room is not None and self.banned(key, lower):
            self.refuse(step, "banned")
        elif (room is not None and room.modes["invite_only"] and not self.is_operator(lower)
              and key not in self.online[lower].invited):
            self.refuse(step, "invite_only")
        elif len(rooms) >= MAX_ROOMS:
            self.refuse(step, "forbidden")
        if step.error is not None:
            return step
        if room is None:
            room = self.rooms[key] = RoomState(room_name)
        self.enter_room(step, room, lower)
        rooms.append(key)
        step.answer(*self.joined_answer(room, step.ref))
        for other in self.v2_sessions(lower):
            if other is not conn:
                step.tell(other, *self.joined_answer(room, False))
        return step

    def plan_part(self, conn: Conn, room_name: str, comment: str | None) -> Step:
        """``part``: for the name; an account's membership ends, its roles stay."""
        step = self.step(conn, "part", room_name if comment is None else {"room": room_name, "comment": comment})
        if self.gate(step, v2_only=True):
            return step
        key, lower = room_name.lower(), str(conn.name).lower()
        if not is_room_name(room_name):
            self.refuse(step, "invalid_room")
        elif key == LOBBY:
            self.refuse(step, "forbidden")
        elif key not in self.rooms:
            self.refuse(step, "no_such_room")
        elif key not in self.rooms_of(lower):
            self.refuse(step, "not_in_room")
        if step.error is not None:
            return step
        room = self.rooms[key]
        self.rooms_of(lower).remove(key)
        room.listed.remove(lower)
        if lower not in self.accounts:
            room.ops.discard(lower)
            room.voiced.discard(lower)
        step.answer(info_sig(f"Left {room.name}", step.ref, room=room.name))
        for other in self.v2_sessions(lower):
            if other is not conn:
                step.tell(other, info_sig(f"Left {room.name}", room=room.name))
        said = clean_topic(comment[:MAX_COMMENT]).strip() if comment else ""
        for other in self.room_sessions(room):
            extra = {"comment": said} if said else {}
            step.tell(other, presence_sig(self.canonical(lower), "offline", room.name, **extra))
        return step

    # -- messages ----------------------------------------------------------------

    def plan_post(self, conn: Conn, text: str, room_name: str | None) -> Step:
        """``msg`` to ``#lobby`` (no room) or a room."""
        step = self.step(conn, "msg", text, **({"room": room_name} if room_name is not None else {}))
        lobby = room_name is None or room_name.lower() == LOBBY
        if self.gate(step, v2_only=not lobby):
            return step
        lower = str(conn.name).lower()
        key = LOBBY if lobby else str(room_name).lower()
        member = lobby or key in self.rooms_of(lower)
        if room_name is not None and not is_room_name(room_name):
            self.refuse(step, "invalid_room")
        elif not lobby and key not in self.rooms:
            self.refuse(step, "no_such_room")
        elif not member and self.rooms[key].modes["no_external"]:
            self.refuse(step, "not_in_room")
        elif self.muted(key, lower):
            self.refuse(step, "muted")
        elif not text.strip():
            self.refuse(step, "empty_message")
        elif len(text) > MAX_MESSAGE:
            self.refuse(step, "message_too_long")
        if step.error is not None:
            return step
        if lobby:
            self.lobby.append(len(self.lobby) + 1)
            audience = [c for holder in self.online.values() for c in holder.sessions]
            shown, ids = None, self.lobby
        else:
            room = self.rooms[key]
            room.stored.append(len(room.stored) + 1)
            audience = self.room_sessions(room) + ([] if member else [conn])  # an outsider's own echo
            shown, ids = room.name, room.stored
        for other in audience:
            step.tell(other, ("message", shown, conn.name, ids[-1], other is conn and step.ref))
        return step

    def dm_recipient(self, sender: str, to: str) -> tuple[str, bool] | None:
        """The canonical name a DM to ``to`` goes to and whether it is
        offline (kept for the account's next login); None: ``no_such_user``.

        A name whose sessions are all v1 is offline (section 6.3: "a name
        with no such session is offline"; see dm_to_v1_account)."""
        if not is_valid_name(to):
            return None
        if self.v2_sessions(to.lower()):
            return self.canonical(to.lower()), False
        if to.lower() in self.accounts and sender.lower() in self.accounts:
            return self.accounts[to.lower()].name, True
        return None

    def plan_dm(self, conn: Conn, text: str, to: str) -> Step:
        """``msg`` with ``to``: to every v2 session of both names, kept for
        each side that is an account (section 6.3)."""
        step = self.step(conn, "msg", text, to=to)
        if self.gate(step, v2_only=True):
            return step
        sender = str(conn.name)
        found = self.dm_recipient(sender, to)
        if found is None:
            self.refuse(step, "no_such_user")
        elif not text.strip():
            self.refuse(step, "empty_message")
        elif len(text) > MAX_MESSAGE:
            self.refuse(step, "message_too_long")
        if found is None or step.error is not None:
            return step
        recipient, offline = found
        conv = conversation(sender, recipient)
        sent = self.dms.setdefault(conv, [])
        message_id = len(sent) + 1
        sent.append((message_id, sender))
        parties = list(dict.fromkeys([sender.lower(), recipient.lower()]))  # once, to oneself
        audience = [c for party in parties for c in self.v2_sessions(party)]
        for other in audience:
            step.tell(other, ("dm", sender, recipient, message_id, offline, other is conn and step.ref))
        for party in parties:
            if party in self.accounts:
                account = self.accounts[party]
                account.kept.setdefault(conv, []).append(message_id)
                if self.v2_sessions(party):
                    account.marks[conv] = message_id  # delivered: not again at a login
        return step

    def plan_history_with(self, conn: Conn, name: str, limit: int | None) -> Step:
        """``history`` with ``with``: the DMs kept for the account."""
        query: dict[str, Any] = {"with": name, **({"limit": limit} if limit is not None else {})}
        step = self.step(conn, "history", query)
        if self.gate(step, v2_only=True):
            return step
        if not conn.account:
            self.refuse(step, "forbidden")  # a guest's DMs are live only
            return step
        if not is_valid_name(name):
            self.refuse(step, "no_such_user")
            return step
        kept = self.accounts[str(conn.name).lower()].kept.get(conversation(str(conn.name), name), [])
        size = max(1, min(500, 100 if limit is None else limit))
        step.answer(("history_with", name, tuple(kept[-size:]), len(kept) > size, step.ref))
        return step

    # -- moderation ----------------------------------------------------------------

    @staticmethod
    def moderation_shape(kind: str, content: Any) -> bool:
        """Whether a moderation request's fields have their types (else ``bad_request``)."""
        if not isinstance(content, dict) or not isinstance(content.get("room"), str):
            return False
        takes = MODERATION[kind]
        if "user" in takes and not isinstance(content.get("user"), str):
            return False
        if "comment" in takes and content.get("comment") is not None and not isinstance(content["comment"], str):
            return False
        duration = content.get("duration")
        if "duration" in takes and duration is not None:
            if not isinstance(duration, int) or isinstance(duration, bool) or duration < 1:
                return False
        if kind == "mode" and any(flag in content and not isinstance(content[flag], bool) for flag in MODE_FLAGS):
            return False
        return True

    def plan_moderation(self, conn: Conn, kind: str, content: Any) -> Step:
        """A section 6.5 request, its checks in their order."""
        step = self.step(conn, kind, content)
        if not self.moderation_shape(kind, content):
            self.refuse(step, "bad_request")
            return step
        if self.gate(step, v2_only=True):
            return step
        room_name = content["room"]
        if not is_room_name(room_name):
            self.refuse(step, "invalid_room")
            return step
        key, actor = room_name.lower(), str(conn.name)
        lower = actor.lower()
        if key != LOBBY and key not in self.rooms:
            self.refuse(step, "no_such_room")
            return step
        room = self.rooms.get(key)
        shown = room.name if room is not None else LOBBY
        modes = room.modes if room is not None else NEW_MODES
        public = room.public if room is not None else True
        listed = room.listed if room is not None else list(self.online)
        flags = {flag: content[flag] for flag in MODE_FLAGS if kind == "mode" and flag in content}
        reading = kind == "mode" and not flags
        operator = self.is_operator(lower)
        member = lower in listed
        if not member and not operator and (not reading or not public):
            self.refuse(step, "not_in_room")
            return step
        needs_op = not reading and not (kind == "invite" and not modes["invite_only"])
        is_op = operator or (room is not None and lower in room.ops)
        if needs_op and not is_op:
            self.refuse(step, "not_op")
        elif key == LOBBY and (kind in ROLE_CHANGES or (kind == "mode" and flags)):
            self.refuse(step, "forbidden")  # #lobby's modes and roles are fixed
        elif kind == "deop" and self.is_operator(content["user"].lower()):
            self.refuse(step, "forbidden")
        if step.error is not None:
            return step
        user = content.get("user")
        target = user
        if isinstance(user, str) and kind not in ("unban", "unmute"):
            # A listed member as it is shown; anyone else as given (and
            # unban, unmute: always as given).
            target = next((self.canonical(name) for name in listed if name == user.lower()), user)
            if kind in TARGET_IS_MEMBER and user.lower() not in listed:
                self.refuse(step, "no_such_user")
                return step
        getattr(self, "_" + kind)(step, key, shown, actor, content, target, flags)
        return step

    def _kick(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        step.answer(info_sig(f"Kicked {target} from {shown}", step.ref, room=shown, user=target))
        self.remove(step, key, shown, target, "kicked", actor, clean_comment(content.get("comment")))

    def _ban(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        if not is_valid_name(target):
            self.refuse(step, "no_such_user")
            return
        # Reading: a ban of a server operator is kept but never holds (they
        # are exempt from bans: see banned()); one that is a member still
        # leaves the room, as a kick would take it out.
        duration = content.get("duration")
        self.bans[(key, target.lower())] = None if duration is None else self.now() + duration
        step.answer(info_sig(f"Banned {target} from {shown}", step.ref, room=shown, user=target))
        listed = self.rooms[key].listed if key != LOBBY else list(self.online)
        if target.lower() in listed:
            self.remove(step, key, shown, target, "banned", actor, clean_comment(content.get("comment")))

    def _unban(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        self.bans.pop((key, target.lower()), None)  # no ban: no error
        step.answer(info_sig(f"Unbanned {target} from {shown}", step.ref, room=shown, user=target))

    def _mute(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        duration = content.get("duration")
        self.mutes[(key, target.lower())] = None if duration is None else self.now() + duration
        step.answer(info_sig(f"Muted {target} in {shown}", step.ref, room=shown, user=target))
        # Reading: "its sessions" are all of them, v1 ones too (section 6.5:
        # every action reaches every session of the target account).
        for conn in self.sessions(target.lower()):
            step.tell(conn, info_sig(f"You were muted in {shown} by {actor}", room=shown, by=actor))

    def _unmute(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        self.mutes.pop((key, target.lower()), None)
        step.answer(info_sig(f"Unmuted {target} in {shown}", step.ref, room=shown, user=target))
        # Reading: the name is told even if it was not muted (as unban
        # gives no error without a ban).
        for conn in self.sessions(target.lower()):
            step.tell(conn, info_sig(f"You were unmuted in {shown} by {actor}", room=shown, by=actor))

    def _role(self, step: Step, key: str, shown: str, actor: str, kind: str, target: str) -> None:
        role, value = ROLE_CHANGES[kind]
        room = self.rooms[key]
        held = room.ops if role == "op" else room.voiced
        if value:
            held.add(target.lower())
        else:
            held.discard(target.lower())
        step.answer(info_sig(f"{ROLE_VERBS[kind]} {target} in {shown}", step.ref, room=shown, user=target))
        for conn in self.room_sessions(room):
            step.tell(conn, event_sig("mode", room=shown, by=actor, user=target, **{role: value}))

    def _op(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        self._role(step, key, shown, actor, "op", target)

    def _deop(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        self._role(step, key, shown, actor, "deop", target)

    def _voice(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        self._role(step, key, shown, actor, "voice", target)

    def _devoice(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        self._role(step, key, shown, actor, "devoice", target)

    def _mode(self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: Any,
              flags: dict[str, bool]) -> None:
        room = self.rooms.get(key)
        if not flags:
            step.answer(info_sig(f"Modes of {shown}", step.ref, room=shown, modes=room.modes if room else NEW_MODES))
            return
        assert room is not None
        changed = {flag: value for flag, value in flags.items() if room.modes[flag] != value}
        room.modes.update(flags)
        step.answer(info_sig(f"Modes of {shown} set", step.ref, room=shown))
        if changed:
            for conn in self.room_sessions(room):
                step.tell(conn, event_sig("mode", room=shown, by=actor, modes=changed))

    def _invite(
        self, step: Step, key: str, shown: str, actor: str, content: dict[str, Any], target: str, flags: Any
    ) -> None:
        if not is_valid_name(target) or not self.v2_sessions(target.lower()):
            self.refuse(step, "no_such_user")
            return
        lower = target.lower()
        target = self.canonical(lower)
        step.answer(info_sig(f"Invited {target} to {shown}", step.ref, room=shown, user=target))
        listed = self.rooms[key].listed if key != LOBBY else list(self.online)
        if lower in listed:
            return  # a member: the info only
        self.online[lower].invited.add(key)
        for conn in self.v2_sessions(lower):
            step.tell(conn, event_sig("invite", room=shown, by=actor))

    def remove(self, step: Step, key: str, shown: str, target: str, reason: str, by: str, comment: str) -> None:
        """A kick or ban takes ``target`` out of the room: its sessions are
        told, the rest get ``presence`` with the reason; out of ``#lobby``
        its sessions close, which takes it out of its rooms too."""
        lower = target.lower()
        verb = "kicked from" if reason == "kicked" else "banned from"
        text = f"You were {verb} {shown} by {by}" + (f": {comment}" if comment else "")
        # Reading: every session of the target is told, v1 ones too, also
        # of a room other than #lobby (section 6.5: every action reaches
        # every session of the target account; section 6.1 keeps other
        # rooms' messages and events from v1 sessions but names no info).
        sessions = self.sessions(lower)
        for conn in sessions:
            step.tell(conn, info_sig(text, room=shown, by=by, comment=comment))
        event = presence_sig(target, "offline", shown, reason=reason, by=by, **({"comment": comment} if comment else {}))
        if key == LOBBY:
            step.closes.update(sessions)
            for conn in self.lobby_v2(but=lower):
                step.tell(conn, event)
            # The sessions close: the last one's logout leaves the rooms
            # (no second #lobby presence: it left #lobby already).
            holder = self.online.get(lower)
            if holder is not None:
                self.leave_rooms(step, lower, holder.name)
                for conn in holder.sessions:
                    conn.name, conn.account = None, False
                del self.online[lower]
            return
        room = self.rooms[key]
        if lower in room.listed:
            room.listed.remove(lower)
            self.rooms_of(lower).remove(key)
            if lower not in self.accounts:
                room.ops.discard(lower)
                room.voiced.discard(lower)
        for conn in self.room_sessions(room):
            step.tell(conn, event)
