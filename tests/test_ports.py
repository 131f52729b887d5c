"""Components meet through the daemon's typed ports, not by name or start order: the
alarm service is the daemon's (like the historian), analytics raises its alarms there and
the scheduler hands its plan to the controller whatever order the factories run in."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import components
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon


def site(tmp_path: Path) -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "Ports"}, "gateways": [{"id": "gw1"}],
        "historian": {"path": str(tmp_path / "history.sqlite")},
        "control": {"state_path": str(tmp_path / "alarms.sqlite")},
        "tariff": {"import_per_kwh": 0.3},
        "analytics": {"detect": False},
    })


@pytest.mark.parametrize("order", ["as listed", "reversed"])
async def test_components_meet_through_ports_in_any_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str) -> None:
    factories = list(components.FACTORIES)
    if order == "reversed":  # keep the API policy first (it closes the API's default gap)
        factories = factories[:1] + factories[:0:-1]
    monkeypatch.setattr(components, "FACTORIES", factories)
    daemon = Daemon(site(tmp_path), socket_path=tmp_path / "api.sock")
    await daemon.start()
    try:
        by_name = {c.name: c for c in daemon.components}
        started = list(by_name)
        assert started.index("analytics") < started.index("control") or order == "as listed"
        alarms = daemon.ports.alarms
        assert alarms is not None and alarms.path == tmp_path / "alarms.sqlite"
        assert by_name["control"].store is alarms  # type: ignore[attr-defined]
        bridge = by_name["analytics"].alarms  # type: ignore[attr-defined]
        assert bridge is not None and bridge.store is alarms
        assert daemon.ports.controller is by_name["control"].controller  # type: ignore[attr-defined]
        assert daemon.ports.forecasts is by_name["analytics"]
        result = await by_name["scheduler"].replan()  # type: ignore[attr-defined]
        assert daemon.ports.controller.plan is result.plan
    finally:
        await daemon.shutdown()
    assert daemon.ports.alarms is None  # closed by the daemon, after the components
