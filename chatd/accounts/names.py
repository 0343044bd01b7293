"""Account names (PROTOCOL.md section 6.4).

An account name is a JSON username or an IRC nick: the whole string
matches ``[A-Za-z0-9]{1,32}`` or ``[A-Za-z_][A-Za-z0-9_-]{0,31}``, and is
not ``server``.  Names compare case-insensitively (ASCII).
"""

from __future__ import annotations

import re

from chatd import messages

_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9]{1,32}|[A-Za-z_][A-Za-z0-9_-]{0,31}")


def is_account_name(name: object) -> bool:
    """Whether ``name`` may name an account (and so a ``to``, ``with`` or ``user``)."""
    return isinstance(name, str) and _ACCOUNT_NAME.fullmatch(name) is not None and name.lower() != messages.SERVER_SENDER

