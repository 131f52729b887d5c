"""Metrics: protocol event counters (IOStats.extra) and invalid points reach /metrics."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from drivers.base import IOStats
from gateway.model import Invalid, Nature
from gateway.service.metrics import _StateCollector
from gateway.state import DeviceState, SiteState


def test_io_events_and_invalid_points_are_exported() -> None:
    state = SiteState()
    state.add_device(DeviceState("relay", Nature.BREAKER, max_age_s=10.0))
    state.update("relay", {"closed": True, "i_a": Invalid(1e9, "OVER_RANGE flag")}, 100.0)
    stats = IOStats(extra={"device_restarts": 2, "time_syncs": 1, "note": "text is skipped",
                           "frames": {"BMS_SOC": 7}})
    daemon = SimpleNamespace(state=state, ios={"relay": SimpleNamespace(stats=stats)},
                             historian=None, started=0.0, gateway_id="gw1")
    reg = CollectorRegistry()
    reg.register(_StateCollector(daemon, lambda: "standalone"))  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert 'autogrid_io_events_total{device="relay",event="device_restarts"} 2.0' in text
    assert 'autogrid_io_events_total{device="relay",event="time_syncs"} 1.0' in text
    assert 'event="note"' not in text
    assert 'autogrid_io_events_total{device="relay",event="frames.BMS_SOC"} 7.0' in text
    assert 'autogrid_invalid_points{device="relay"} 1.0' in text
