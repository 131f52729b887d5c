"""Fake site states for control unit tests: a SiteConfig and a SiteState filled by hand."""

from __future__ import annotations

from typing import Any

from gateway.config.models import SiteConfig
from gateway.model import Nature, PointValue
from gateway.state import DeviceState, SiteState

T0 = 1_750_000_000.0  # a fixed 'now' for every fake


def site_config(devices: list[dict[str, Any]] | None = None, control: dict[str, Any] | None
                = None, grid: dict[str, Any] | None = None, **extra: Any) -> SiteConfig:
    devs = devices if devices is not None else DEFAULT_DEVICES
    return SiteConfig.model_validate({
        "site": {"name": "fake", "grid": grid or {"import_limit_kw": 43, "export_limit_kw": 20}},
        "gateways": [{"id": "gw1"}],
        "connections": [{"id": "c", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1}],
        "devices": [{"template": "x", "connection": "c", "unit_id": i + 1, **d}
                    for i, d in enumerate(devs)],
        "control": control if control is not None else {},
        **extra})


DEFAULT_DEVICES: list[dict[str, Any]] = [
    {"id": "meter", "nature": "meter", "role": "grid", "ratings": {"i_max_a": 63}},
    {"id": "pv", "nature": "pv_inverter", "ratings": {"p_max_kw": 30}},
    {"id": "bat", "nature": "bess", "ratings": {"capacity_kwh": 50, "p_max_kw": 25}},
    {"id": "ev1", "nature": "evse", "ratings": {"p_max_kw": 11, "p_discharge_max_kw": 11}},
    {"id": "ev2", "nature": "evse", "ratings": {"p_max_kw": 11}},
    {"id": "heater", "nature": "load", "ratings": {"p_max_kw": 9},
     "control": {"priority": "deferrable"}},
    {"id": "fridge", "nature": "load", "ratings": {"p_max_kw": 2},
     "control": {"priority": "critical"}},
    {"id": "pcc", "nature": "breaker"},
]


def site_state(cfg: SiteConfig, values: dict[str, dict[str, PointValue | None]], ts: float = T0
               ) -> SiteState:
    state = SiteState()
    for d in cfg.devices:
        state.add_device(DeviceState(d.id, Nature(d.nature), 10.0, role=d.role,
                                     capacity_kwh=d.ratings.capacity_kwh))
    for dev_id, pts in values.items():
        state.update(dev_id, pts, ts)
    return state


def normal_values(grid_kw: float = 10.0, pv_kw: float = 0.0, bat_p: float = 0.0,
                  soc: float = 60.0, heater_on: bool = True
                  ) -> dict[str, dict[str, PointValue | None]]:
    return {
        "meter": {"p_kw": grid_kw, "v_v": 230.0, "f_hz": 50.0},
        "pv": {"p_kw": pv_kw, "p_limit_pct": 100.0, "p_rated_kw": 30.0},
        "bat": {"soc_pct": soc, "p_kw": bat_p, "p_charge_max_kw": 25.0,
                "p_discharge_max_kw": 25.0, "capacity_kwh": 50.0, "cell_temp_max_c": 25.0},
        "ev1": {"connected": False, "p_kw": 0.0, "p_max_kw": 11.0, "v2g": False},
        "ev2": {"connected": False, "p_kw": 0.0, "p_max_kw": 11.0, "v2g": False},
        "heater": {"p_kw": 9.0 if heater_on else 0.0, "enabled": heater_on},
        "fridge": {"p_kw": 2.0, "enabled": True},
        "pcc": {"closed": True, "i_a": 20.0},
    }


def car(connected: bool = True, p_kw: float = 0.0, soc: float = 50.0, v2g: bool = False,
        departure_s: float = 8 * 3600.0, energy_kwh: float = 20.0,
        delivered: float = 0.0) -> dict[str, PointValue | None]:
    return {"connected": connected, "p_kw": p_kw, "p_max_kw": 11.0, "v2g": v2g,
            "ev_soc_pct": soc, "ev_departure_s": departure_s, "ev_energy_req_kwh": energy_kwh,
            "e_session_kwh": delivered}
