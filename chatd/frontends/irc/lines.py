"""IRC lines in and out: framing, IRCv3 tags, parsing, formatting.

Parsing of the tag-less part is Twisted's (``twisted.words.protocols.irc.
parsemsg``); what it lacks is here, written once: the IRCv3 tag section
(parsed and serialised by us, client-only ``+tags`` included, which
Twisted's writer refuses), the length limits of PROTOCOL.md section 7.5
applied while the bytes arrive (:class:`LineSplitter`: an over-long line
is discarded up to its LF and never buffered past the limit), and UTF-8
decoding with U+FFFD for bad bytes.

Everything here is pure: no Twisted reactor, no state beyond a
splitter's partial line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from twisted.words.protocols.irc import parsemsg

#: The tag section of a received line, from ``@`` through the space after
#: it, may have this many bytes (section 7.5).
MAX_TAG_BYTES = 4096

#: The rest of a received line, CR LF included, may have this many bytes.
MAX_LINE_BYTES = 512

#: What a line may hold besides CR LF.
MAX_REST_BYTES = MAX_LINE_BYTES - 2

#: Tags the server may put on a line it sends (section 7.5).
MAX_SENT_TAG_BYTES = 8191

#: A tag name: an optional ``+`` (client-only), an optional vendor
#: (``example.com/``), then letters, digits and hyphens.
_TAG_NAME = re.compile(r"\+?(?:[A-Za-z0-9.-]+/)?[A-Za-z0-9-]+")

#: A command: letters, or a three-digit numeric.
_COMMAND = re.compile(r"[A-Za-z]+|[0-9]{3}")

_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_ESCAPE = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})

#: Characters a parameter may never carry (they would end or break the line).
_BREAKING = str.maketrans({"\r": " ", "\n": " ", "\x00": " "})


@dataclass
class Line:
    """One received line: tags (unescaped; ``""`` for a tag without a
    value), the prefix (ignored by the server), the command in upper case
    and the parameters."""

    command: str
    params: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    prefix: str = ""

    @property
    def label(self) -> str | None:
        """The ``label`` tag (labeled-response), if any."""
        return self.tags.get("label") or None

    def client_tags(self) -> dict[str, str]:
        """The client-only tags (``+name``), in the order sent."""
        return {name: value for name, value in self.tags.items() if name.startswith("+")}


@dataclass
class BadLine:
    """A received line the server could not take: ``reason`` is
    ``too_long`` (417) or ``malformed`` (no command, or a command that is
    not one); ``command`` is what stood where the command should be."""

    reason: str
    command: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """The ``label`` tag, if the tags could be read."""
        return self.tags.get("label") or None


Received = Line | BadLine


def unescape_tag_value(value: str) -> str:
    """A tag value as the IRCv3 message-tags escaping gives it back.

    ``\\:`` is ``;``, ``\\s`` a space, ``\\\\`` a backslash, ``\\r`` and
    ``\\n`` CR and LF; a backslash before any other character is dropped,
    and so is a lone backslash at the end.
    """
    if "\\" not in value:
        return value
    out: list[str] = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\":
            index += 1
            if index < len(value):
                following = value[index]
                out.append(_UNESCAPE.get(following, following))
        else:
            out.append(char)
        index += 1
    return "".join(out)


def escape_tag_value(value: str) -> str:
    """A tag value escaped for the wire."""
    return value.translate(_ESCAPE)


def parse_tags(section: str) -> dict[str, str]:
    """The tags of a tag section (without ``@``); malformed tags are left
    out, and a tag given twice keeps its last value."""
    tags: dict[str, str] = {}
    for item in section.split(";"):
        if not item:
            continue
        name, _, value = item.partition("=")
        if _TAG_NAME.fullmatch(name) is None:
            continue
        tags[name] = unescape_tag_value(value)
    return tags


def format_tags(tags: dict[str, str]) -> str:
    """Tags for the wire (without ``@``): ``name`` alone for an empty value."""
    return ";".join(name if not value else f"{name}={escape_tag_value(value)}" for name, value in tags.items())


def parse_line(raw: bytes) -> Received:
    """One received line (without CR LF) as a :class:`Line`, or a
    :class:`BadLine` (``malformed``).

    Invalid UTF-8 is decoded with U+FFFD in place of the bad bytes.
    """
    text = raw.decode("utf-8", "replace")
    tags: dict[str, str] = {}
    if text.startswith("@"):
        section, _, text = text.partition(" ")
        tags = parse_tags(section[1:])
    text = text.lstrip(" ")
    if not text or (text.startswith(":") and " " not in text.strip()):
        return BadLine("malformed", "", tags)
    try:
        prefix, command, params = parsemsg(text)  # type: ignore[no-untyped-call]  # Twisted's irc module is not annotated
    except (ValueError, IndexError):
        return BadLine("malformed", "", tags)
    if _COMMAND.fullmatch(command) is None:
        return BadLine("malformed", command[:32], tags)
    return Line(command.upper(), list(params), tags, prefix)


def too_long(raw: bytes) -> bool:
    """Whether a complete received line (without CR LF) passes the limits."""
    if raw.startswith(b"@"):
        space = raw.find(b" ")
        if space < 0:
            return len(raw) >= MAX_TAG_BYTES
        if space + 1 > MAX_TAG_BYTES:
            return True
        return len(raw) - (space + 1) > MAX_REST_BYTES
    return len(raw) > MAX_REST_BYTES


class LineSplitter:
    """Splits a byte stream into lines, within the limits of section 7.5.

    LF ends a line (a CR before it is dropped); empty lines are skipped.
    A line that passes the limits is reported once, as ``None`` among the
    lines, and discarded up to its LF: the splitter never holds more than
    the longest acceptable line.
    """

    #: The most a partial line may hold: a full tag section and a full rest.
    MAX_PARTIAL = MAX_TAG_BYTES + MAX_REST_BYTES + 1

    def __init__(self) -> None:
        self._partial = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held of a line not yet ended."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes | None]:
        """The lines ``data`` completes, in order: bytes (CR LF removed),
        or None for a line over the limit."""
        lines: list[bytes | None] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._hold(data[start:], lines)
                return lines
            chunk = data[start:end]
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            if self._partial:
                self._partial += chunk
                raw = bytes(self._partial)
                self._partial.clear()
            else:
                raw = chunk
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw.strip(b" \r"):
                continue
            lines.append(None if too_long(raw) else raw)

    def _hold(self, rest: bytes, lines: list[bytes | None]) -> None:
        if self._discarding or not rest:
            return
        self._partial += rest
        if self._over_limit():
            # Over the limit before its end: report it now and drop what
            # comes until its LF, holding none of it.
            self._partial.clear()
            self._discarding = True
            lines.append(None)

    def _over_limit(self) -> bool:
        partial = self._partial
        if len(partial) > self.MAX_PARTIAL:
            return True
        if partial.startswith(b"@"):
            space = partial.find(b" ")
            if space < 0:
                return len(partial) > MAX_TAG_BYTES
            return space + 1 > MAX_TAG_BYTES or len(partial) - (space + 1) > MAX_REST_BYTES + 1
        return len(partial) > MAX_REST_BYTES + 1  # a CR may still come


def format_params(params: list[str], trailing: bool = False) -> str:
    """Parameters for the wire: the last one with ``:`` when it needs one
    (empty, a space, a leading ``:``) or ``trailing`` asks for it."""
    if not params:
        return ""
    cleaned = [param.translate(_BREAKING) for param in params]
    *middle, last = cleaned
    # A middle parameter cannot hold a space or start with ':': it would
    # split or turn into the trailing one.
    middle = [(param.replace(" ", "_").lstrip(":") or "*") for param in middle]
    if trailing or not last or " " in last or last.startswith(":"):
        last = ":" + last
    return " ".join([*middle, last])


def build(command: str, params: list[str], source: str | None = None, trailing: bool = False) -> bytes:
    """A line's tag-less part (no CR LF): ``:source COMMAND params``."""
    text = command
    if params:
        text += " " + format_params(params, trailing)
    if source:
        text = f":{source} {text}"
    return text.encode("utf-8")


def assemble(tags: bytes, body: bytes) -> bytes:
    """A whole line to send: ``@tags `` (if any), the body, CR LF."""
    if tags:
        return b"@" + tags + b" " + body + b"\r\n"
    return body + b"\r\n"


def add_tag(tags: bytes, extra: bytes) -> bytes:
    """``extra`` (one or more serialised tags) in front of ``tags``."""
    return extra + b";" + tags if tags else extra


def cut_utf8(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` bytes of UTF-8, cut at
    character boundaries (never an empty piece)."""
    pieces: list[str] = []
    encoded = text.encode("utf-8")
    while len(encoded) > limit:
        cut = limit
        # Step back over continuation bytes (10xxxxxx) to a boundary.
        while cut > 0 and (encoded[cut] & 0xC0) == 0x80:
            cut -= 1
        if cut == 0:
            cut = limit  # a limit below one character: cannot happen for IRC lines
        pieces.append(encoded[:cut].decode("utf-8"))
        encoded = encoded[cut:]
    if encoded:
        pieces.append(encoded.decode("utf-8"))
    return pieces
