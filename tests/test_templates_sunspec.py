"""Interoperability: pysunspec2's own Modbus client scans and reads our simulated inverter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from gateway.config.models import SiteConfig
from sim_devices.runner import SimRunner


def site_config() -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "sunspec", "latitude": 52.5, "longitude": 13.4},
        "gateways": [{"id": "gw1"}],
        "connections": [{"id": "tcp1", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "devices": [{"id": "pv1", "nature": "pv_inverter", "template": "sunspec_inverter",
                     "connection": "tcp1", "unit_id": 7,
                     "ratings": {"p_max_kw": 80, "kwp": 90}}],
        "simulation": {"clock": {"start": "2024-06-21T11:00:00Z"}},
    })


def scan(port: int) -> dict[str, Any]:
    """Blocking: what a SunSpec client finds (run in a worker thread)."""
    dev = SunSpecModbusClientDeviceTCP(slave_id=7, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        dev.scan()
        inv, ctl, common = dev.models[103][0], dev.models[123][0], dev.models[1][0]
        return {
            "models": sorted(k for k in dev.models if isinstance(k, int)),
            "Mn": common.Mn.value, "SN": common.SN.value, "DA": common.DA.value,
            "W": inv.W.cvalue, "Hz": inv.Hz.cvalue, "PhVphA": inv.PhVphA.cvalue,
            "WH": inv.WH.cvalue, "TmpCab": inv.TmpCab.cvalue, "St": inv.St.value,
            "A": inv.A.value, "WRtg": dev.models[120][0].WRtg.cvalue,
            "WMaxLimPct": ctl.WMaxLimPct.cvalue,
        }
    finally:
        dev.close()


async def test_pysunspec2_client_scans_and_reads_the_simulated_inverter() -> None:
    runner = SimRunner(site_config(), port_overrides={"tcp1": 0}, step_s=3600)
    ports = await runner.start()
    try:
        runner.step(600.0)
        found = await asyncio.to_thread(scan, ports["tcp1"])
        model = runner.values("pv1")
    finally:
        await runner.stop()
    assert found["models"] == [1, 103, 120, 123]
    assert found["Mn"] == "SunSpec Alliance (generic)"
    assert found["SN"] == "pv1" and found["DA"] == 7
    assert model["p_kw"] > 1.0  # June noon: the comparison below is not between zeros
    assert found["W"] == pytest.approx(model["p_kw"] * 1000.0, abs=5.0)  # W_SF = 1
    assert found["Hz"] == pytest.approx(model["f_hz"], abs=0.005)
    assert found["PhVphA"] == pytest.approx(model["v_v"], abs=0.05)
    assert found["WH"] == pytest.approx(model["e_total_kwh"] * 1000.0, abs=0.5)
    assert found["TmpCab"] == pytest.approx(model["temp_c"], abs=0.05)
    assert found["St"] in (4, 5)  # MPPT or THROTTLED
    assert found["A"] is None  # not implemented points read as such
    assert found["WRtg"] == pytest.approx(80_000.0)
    assert found["WMaxLimPct"] == pytest.approx(model["p_limit_pct"])
