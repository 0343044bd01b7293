"""Prometheus metrics of one chatd: counters kept by the hub and the
connections, gauges read from the factory at scrape time.

Each :class:`Metrics` has its own ``CollectorRegistry``: no global state,
so tests can run several servers in one process.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _LiveGauges(Collector):
    """``chatd_connections{transport}`` and ``chatd_users``, read when scraped."""

    def __init__(self, read: Callable[[], tuple[dict[str, int], int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connections, users = self.read()
        family = GaugeMetricFamily("chatd_connections", "Open chat connections.", labels=["transport"])
        for transport in ("tcp", "websocket"):
            family.add_metric([transport], connections.get(transport, 0))
        yield family
        yield GaugeMetricFamily("chatd_users", "Logged-in users.", value=users)


class _RoomsGauge(Collector):
    """``chatd_rooms``, read when scraped."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("chatd_rooms", "Rooms that exist, #lobby included.", value=self.read())


class Metrics:
    """The counters and histograms of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages_accepted = Counter(
            "chatd_messages_accepted", "Messages stored and sent.", registry=self.registry
        )
        self.deliveries = Counter(
            "chatd_deliveries", "Messages delivered, one per message per recipient.", registry=self.registry
        )
        self.errors = Counter("chatd_errors", "Error responses sent, by code.", ["code"], registry=self.registry)
        self.history_write_seconds = Histogram(
            "chatd_history_write_seconds",
            "Time to commit one batch of messages to history.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.sendq_drops = Counter(
            "chatd_sendq_drops", "Connections dropped for unsent output over --max-sendq.", registry=self.registry
        )

    def watch_rooms(self, read: Callable[[], int]) -> None:
        """Report the number of rooms from ``read`` at scrape time (``chatd_rooms``)."""
        self.registry.register(_RoomsGauge(read))

    def watch(self, read: Callable[[], tuple[dict[str, int], int]]) -> None:
        """Report live connection and user counts from ``read`` at scrape time."""
        self.registry.register(_LiveGauges(read))

    def exposition(self) -> bytes:
        """The Prometheus text format of everything."""
        return generate_latest(self.registry)


def content_type() -> str:
    """The Content-Type of :meth:`Metrics.exposition`."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return CONTENT_TYPE_LATEST


__all__ = ["Metrics", "content_type"]
