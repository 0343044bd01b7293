"""CI: talk to a running chatd (the container) over loopback and check it.

    python .ci/converse.py PORT

A classic client and a lines client log in, chat and list names; exits
non-zero with a message if anything is off.  Bounded: socket timeouts.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.e2e import ClassicClient, LinesClient  # noqa: E402


def main() -> None:
    port = int(sys.argv[1])
    classic, modern = ClassicClient(port), LinesClient(port)
    classic.send("login", "oldtimer")
    assert classic.receive()["content"] == "Login successful. You are now logged in as oldtimer"
    assert classic.receive()["response"] == "history"
    modern.send("login", "newcomer")
    assert modern.receive()["response"] == "info"
    assert modern.receive()["response"] == "history"
    modern.send("msg", "hello from CI")
    echo = modern.receive()
    assert (echo["sender"], echo["content"]) == ("newcomer", "hello from CI"), echo
    assert classic.receive() == echo
    classic.send("names")
    names = classic.receive()["content"]
    assert names == "oldtimer, newcomer", names
    classic.close()
    modern.close()
    print(f"conversation with chatd on port {port}: ok ({names})")


if __name__ == "__main__":
    main()
