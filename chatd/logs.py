"""``--log-format json``: one JSON object per log line, for log shippers.

Each line is ``{"time", "level", "namespace", "message", ...}``: the
time in ISO 8601 UTC, the level name, the event's text as
``twisted.logger.formatEvent`` renders it, then the event's own fields
that are plain JSON values (``user``, ``peer``, ``count``, ...) and, for
a failure, its ``traceback``.

twistd decides where logs go (``--logfile``, ``-n``) before it knows our
options, but it lets the application supply its ``ILogObserver``; the
observer made here writes where twistd would have written its text log.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, Mapping, Protocol, TextIO

from twisted.logger import ILogObserver, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

_PLAIN = (str, int, float, bool, type(None))


class TextStream(Protocol):
    """Where log lines go: a text file, stdout, or twistd's ``LogFile``."""

    def write(self, text: str) -> object:
        """Write ``text``."""

    def flush(self) -> object:
        """Push what was written to the file."""


def log_destination(logfile: str | None, nodaemon: bool) -> TextIO | LogFile:
    """Where twistd would log: stdout in the foreground, else a file."""
    if logfile == "-" or (not logfile and nodaemon):
        return sys.stdout
    log_file: LogFile = LogFile.fromFullPath(logfile or "twistd.log")
    return log_file


def event_as_json(event: dict[str, Any]) -> str:
    """One log event as one line of JSON (no newline)."""
    when = datetime.fromtimestamp(event.get("log_time", 0), tz=timezone.utc)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, default=str)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as a JSON line to a text stream."""

    def __init__(self, stream: TextStream) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(event_as_json(event) + "\n")
        self.stream.flush()


def json_observer(twistd_options: Mapping[str, Any] | None) -> ILogObserver:
    """A JSON-lines observer for the destination of these twistd options."""
    logfile = twistd_options.get("logfile") if twistd_options is not None else None
    nodaemon = bool(twistd_options.get("nodaemon")) if twistd_options is not None else True
    return JSONLinesObserver(log_destination(logfile, nodaemon))
