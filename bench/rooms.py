"""The "rooms" shape of bench/fanout.py: fan-out in a realistic room layout.

    .venv/bin/python bench/fanout.py --shapes rate,rooms      # with the single-room rate shape, same run

N users (``--room-users``, default 2,000) in R rooms (``--rooms``, 200)
of S members (``--room-size``, 10), and every user also in ``#lobby``.
Membership k (k = 0 .. R*S-1) puts user k mod N in room k div S, so with
R*S = N every user is in exactly one room besides the lobby, and rooms
are runs of consecutive users.  The set-up: every user logs in (the
probes first), then they join place by place (the first member of every room, then the
second, and so on).  The traffic: ``--room-rate`` messages per
second in all (default 1,000) for ``--room-seconds``, evenly spaced, each
to a random room from a random member of it (a seeded schedule, fixed
before the run: every client's expected count is known); a share
``--lobby-share`` (default 0: the lobby is idle, only membership) goes to
``#lobby`` from a random user instead.

chatd users log in with protocol 1, then (once everyone has) send
``hello`` (protocol 2) and one ``join`` per room, pipelined; IRC users
register, then ``JOIN #lobby,#rN``.  With
``--irc-echo on`` (the default) IRC clients ask for ``echo-message``, so
on every server a room message is S deliveries, the sender's own copy
included (chatd always echoes).

Latency: ``--room-probes`` users (default 40), each in a different room
and at a different place in its room's join order (probe j: room j*R/P,
place j mod S), run in the probe
process (bench/probe.py) and report receipt minus send time of every
message they get; the senders are the other members (a probe never
sends).  Server CPU per delivery: server CPU over the window divided by
the lines the clients received.  The set-up traffic (IRC's JOIN storm in
``#lobby``: n²/2 lines; presence) is read and thrown away until the
sockets have been quiet for half a second and the server spent under
5% of a core in that time (a server can be busy with the storm for
longer than that before its next write), before the window opens.
"""

from __future__ import annotations

import random
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from common import LOBBY, WAIT, Counter, Server, dialect_of, enter_in_two_phases, paced_window

SETTLE_QUIET = 0.5  # seconds without a byte after which the set-up is over
JOIN_BATCH = 200  # users logging in and joining at once


@dataclass(frozen=True)
class Layout:
    """Who is in which room."""

    users: int
    rooms: int
    size: int

    def __post_init__(self) -> None:
        if not 2 <= self.size <= self.users:
            raise ValueError("a room needs at least 2 members and at most --room-users")
        if self.rooms < 1:
            raise ValueError("at least one room")

    @staticmethod
    def name(room: int) -> str:
        """The room's name (``#r17``)."""
        return f"#r{room}"

    def members(self, room: int) -> list[int]:
        """The room's users, in join order."""
        return [(room * self.size + place) % self.users for place in range(self.size)]

    def rooms_of(self, user: int) -> list[int]:
        """The rooms ``user`` is in, ``#lobby`` not counted."""
        return [k // self.size for k in range(user, self.rooms * self.size, self.users)]

    def room_names(self, user: int) -> list[str]:
        """``#lobby`` and the user's rooms, by name."""
        return [LOBBY, *(self.name(room) for room in self.rooms_of(user))]

    def rooms_per_user(self) -> int:
        """The most rooms any user is in, ``#lobby`` not counted."""
        return -(-self.rooms * self.size // self.users)

    def place(self, user: int) -> int:
        """Where ``user`` is in its first room's join order."""
        return user % self.size

    def join_order(self, probes: set[int]) -> list[int]:
        """Every user, place by place (everyone at place 0 of a room, then place 1, ...), each
        place's probes after its other users: a probe at place p is the p-th of its room to join."""
        return sorted(range(self.users), key=lambda user: (self.place(user), user in probes, user))

    def probes(self, count: int) -> list[int]:
        """``count`` probe users: each in a different room, at a different place in its room
        (probe j: room j*R/count, place j mod S), in user order."""
        if count > self.rooms:
            raise ValueError("at most one probe per room: --room-probes <= --rooms")
        chosen: list[int] = []
        for j in range(count):
            user = self.members(j * self.rooms // count)[j % self.size]
            if user not in chosen:
                chosen.append(user)
        return sorted(chosen)


@dataclass
class Schedule:
    """The run's messages, fixed before it starts: room index (-1: ``#lobby``) and sender."""

    rooms: list[int]
    senders: list[int]
    expected: list[int]  # per user: message lines it will receive

    @classmethod
    def make(cls, layout: Layout, total: int, lobby_share: float, probes: set[int], echo: bool, seed: int) -> "Schedule":
        """A seeded schedule of ``total`` messages; probes never send."""
        rng = random.Random(seed)
        senders_of = [[user for user in layout.members(room) if user not in probes] for room in range(layout.rooms)]
        if not all(senders_of):
            raise ValueError("a room whose every member is a probe has no sender")
        everyone = [user for user in range(layout.users) if user not in probes]
        expected = [0] * layout.users
        rooms, senders = [], []
        lobby = 0
        for _ in range(total):
            if lobby_share > 0 and rng.random() < lobby_share:
                room, sender = -1, rng.choice(everyone)
                lobby += 1
                if not echo:
                    expected[sender] -= 1
            else:
                room = rng.randrange(layout.rooms)
                sender = rng.choice(senders_of[room])
                for member in layout.members(room):
                    if echo or member != sender:
                        expected[member] += 1
            rooms.append(room)
            senders.append(sender)
        return cls(rooms, senders, [count + lobby for count in expected])


async def rooms_shape(server: Server, layout: Layout, per_second: float, seconds: float, lobby_share: float,
                      irc_echo: bool, seed: int, probe: subprocess.Popen[bytes] | None, probe_users: list[int]) -> dict[str, Any]:
    """Set the rooms up, send the schedule at its rate, and measure (see the module docstring)."""
    dialect = dialect_of(server, irc_echo)
    total = int(per_second * seconds)
    schedule = Schedule.make(layout, total, lobby_share, set(probe_users), dialect.echo, seed)
    set_up = time.perf_counter()
    # A batch of users at once: InspIRCd completes a registration only in its once-a-second
    # background pass, so the logins take about a second per batch.
    # Everyone logs in (the probes first: one batch of them, not one per run of bulk users between
    # two probes), then everyone joins (see JsonDialect: no presence storm in #lobby).
    logins = [*probe_users, *(user for user in range(layout.users) if user not in set(probe_users))]
    clients = await enter_in_two_phases(server, dialect, logins, layout.join_order(set(probe_users)),
                                        probe, set(probe_users), layout.room_names, JOIN_BATCH)
    counter = Counter(tick=0.02)  # a few messages per read: kernel buffers hold far more than 20 ms of them
    for c in clients:
        c.link.count(1 << 62, counter)  # registered now; the window's count is set after the set-up
    thrown = await counter.settle(SETTLE_QUIET, 5 * WAIT, server.cpu)
    set_up = time.perf_counter() - set_up
    by_user = {c.index: c for c in clients}
    for c in clients:
        counter.expect(c.link, schedule.expected[c.index])
    names = [LOBBY if room < 0 else layout.name(room) for room in schedule.rooms]
    links = [by_user[sender].link for sender in schedule.senders]

    def send(n: int) -> None:
        links[n].write(dialect.message(f"t={time.monotonic_ns()} n={n}", names[n]))

    figures = await paced_window(server, probe, clients, counter, per_second, seconds, total, send, sum(schedule.expected))
    return {**figures, "set_up_s": set_up, "set_up_lines": thrown}


def probe_plan(layout: Layout, probe_users: list[int], per_second: float, seconds: float, lobby_share: float,
               irc_echo: bool, seed: int, protocol: str) -> list[dict[str, Any]]:
    """The probe process's configuration: each probe's rooms and expected message count
    (the same seeded schedule as ``rooms_shape``'s)."""
    echo = protocol == "json" or irc_echo
    schedule = Schedule.make(layout, int(per_second * seconds), lobby_share, set(probe_users), echo, seed)
    return [{"index": user, "rooms": layout.room_names(user), "expected": schedule.expected[user]} for user in probe_users]
