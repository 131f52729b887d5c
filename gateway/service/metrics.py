"""Prometheus metrics on a loopback HTTP port (config section ``metrics:``).

Counters and gauges are read from the daemon's state at scrape time (nothing to keep in
step); poll latencies go into a histogram as they happen. The HTTP side is a few lines of
asyncio on the daemon's loop (no extra thread): ``GET /metrics`` answers, anything else 404.

Hooks for other parts (they find this component with ``metrics_of(daemon)``):
``observe_control_cycle(seconds)``, ``record_setpoint(device, point, value)``,
``set_cluster_role(role)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.aio import cancel_and_wait
from gateway.config.models import Metrics as MetricsConfig

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from gateway.daemon import Daemon

log = logging.getLogger("autogrid.metrics")

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
QUALITIES = ("good", "stale", "offline")


class _StateCollector(Collector):
    """Reads the daemon's state and I/O counters when Prometheus scrapes."""

    def __init__(self, daemon: Daemon, role: Callable[[], str]) -> None:
        self.daemon = daemon
        self.role = role

    def collect(self) -> Iterator[Metric]:
        d, now = self.daemon, time.time()
        polls = CounterMetricFamily("autogrid_polls", "Polls of a device", labels=["device"])
        errors = CounterMetricFamily("autogrid_poll_errors", "Failed polls of a device",
                                     labels=["device"])
        quality = GaugeMetricFamily("autogrid_device_quality",
                                    "1 for the device's current quality", labels=["device",
                                                                                  "quality"])
        io_fams = {k: CounterMetricFamily(f"autogrid_io_{k}", f"Protocol {k} of a device",
                                          labels=["device"])
                   for k in ("requests", "errors", "timeouts", "reconnects", "writes")}
        events = CounterMetricFamily("autogrid_io_events", "Protocol events of a device "
                                     "(DNP3 restarts, time syncs, bad frames, dropped CAN "
                                     "frames, ...)", labels=["device", "event"])
        invalid = GaugeMetricFamily("autogrid_invalid_points", "Points whose value cannot be "
                                    "true (out of range, not-available pattern)",
                                    labels=["device"])
        for dev_id, ds in list(d.state.devices.items()):
            polls.add_metric([dev_id], ds.health.polls)
            invalid.add_metric([dev_id], float(len(ds.invalid)))
            errors.add_metric([dev_id], ds.health.errors)
            q = str(ds.device_quality(now))
            for name in QUALITIES:
                quality.add_metric([dev_id, name], 1.0 if q == name else 0.0)
            io = d.ios.get(dev_id)
            if io is not None:
                for k, fam in io_fams.items():
                    fam.add_metric([dev_id], getattr(io.stats, k))
                for name, value in io.stats.counters().items():
                    events.add_metric([dev_id, name], value)
        yield from (polls, errors, quality, *io_fams.values(), events, invalid)
        rows = CounterMetricFamily("autogrid_historian_rows", "Rows written by the historian")
        dropped = CounterMetricFamily("autogrid_historian_dropped",
                                      "Readings the historian had to drop")
        if d.historian is not None:
            rows.add_metric([], d.historian.rows_written)
            dropped.add_metric([], d.historian.dropped)
        yield rows
        yield dropped
        role = GaugeMetricFamily("autogrid_cluster_role", "1 for this gateway's cluster role",
                                 labels=["gateway", "role"])
        role.add_metric([d.gateway_id, self.role()], 1.0)
        yield role
        up = GaugeMetricFamily("autogrid_uptime_seconds", "Seconds since the daemon started")
        up.add_metric([], now - d.started)
        yield up


class MetricsComponent:
    name = "metrics"

    def __init__(self, daemon: Daemon, cfg: MetricsConfig) -> None:
        self.daemon = daemon
        self.cfg = cfg
        self.cluster_role = "standalone"  # until the cluster component says otherwise
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(daemon, lambda: self.cluster_role))
        self.latency = Histogram("autogrid_poll_latency_ms", "Poll latency of a device (ms)",
                                 ["device"], buckets=LATENCY_BUCKETS_MS, registry=self.registry)
        self.control_cycle = Histogram("autogrid_control_cycle_seconds",
                                       "Duration of one site-controller cycle",
                                       registry=self.registry)
        self.setpoints = Gauge("autogrid_setpoint", "Last setpoint written to a device",
                               ["device", "point"], registry=self.registry)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.port: int | None = None

    # -- hooks for control and cluster -------------------------------------------------

    def observe_control_cycle(self, seconds: float) -> None:
        self.control_cycle.observe(seconds)

    def record_setpoint(self, device: str, point: str, value: float | bool) -> None:
        self.setpoints.labels(device, point).set(float(value))

    def set_cluster_role(self, role: str) -> None:
        self.cluster_role = role

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._unsubscribe = self.daemon.state.on_poll(self._polled)
        self._server = await asyncio.start_server(self._client, self.cfg.host, self.cfg.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.cfg.host, self.port)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(list(self._clients))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _polled(self, device_id: str, ok: bool, latency_ms: float | None) -> None:
        if ok and latency_ms is not None:
            self.latency.labels(device_id).observe(latency_ms)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            request = await asyncio.wait_for(reader.readline(), 10.0)
            while await asyncio.wait_for(reader.readline(), 10.0) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            parts = request.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] in ("GET", "HEAD") and \
                    parts[1].split("?")[0] == "/metrics":
                body = self.render()
                head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
                        b"charset=utf-8\r\n")
            else:
                body = b"not found: try /metrics\n"
                head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode() + (b"" if parts[:1] == ["HEAD"] else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError, ValueError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def build(daemon: Daemon) -> MetricsComponent | None:
    """Component factory (gateway.components.FACTORIES): on when ``metrics:`` is set."""
    cfg = daemon.cfg.metrics
    return MetricsComponent(daemon, cfg) if cfg is not None else None


def metrics_of(daemon: Daemon) -> MetricsComponent | None:
    """The running metrics component, for control and cluster to report into."""
    for comp in daemon.components:
        if isinstance(comp, MetricsComponent):
            return comp
    return None
