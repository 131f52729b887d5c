"""The write path through a real daemon and simulated Modbus devices on loopback: an
over-current held constant trips after its delay, a protection zero the charger first
refuses is retried until the charger takes it, and after a reload that replaces a device
the writes reach the new device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.loader import LoadedConfig
from gateway.service.reload import apply
from tests.test_control_daemon import POLL_S, running, site, wait_for

if TYPE_CHECKING:
    from gateway.control.applier import WriteOutcome


def chargers_at(p_kw: float) -> dict[str, Any]:
    return {ev: {"default_p_kw": p_kw} for ev in ("ev_a", "ev_b", "ev_c")}


async def test_constant_over_current_trips_and_a_refused_zero_is_retried_until_taken(
        tmp_path: Path) -> None:
    cfg = site(tmp_path, import_limit=60.0, sim=chargers_at(7.0),
               control={"controller": False,  # only protection writes in this test
                        "protection": {"current_delay_s": 1.0, "reset_after_s": 3600}})
    for d in cfg.devices:
        if d.id == "meter":  # 15 kW of constant load: ~22 A a phase, held
            d.ratings.i_max_a = 10.0
    async with running(cfg) as (runner, daemon, comp):
        await runner.set_fault("ev_a", "exception", code=6)  # refuses reads and writes
        outcomes: list[WriteOutcome] = []
        comp.applier.on_outcome.append(outcomes.append)
        assert runner.values("ev_a")["p_set_kw"] == 7.0
        await wait_for(lambda: comp.store.is_active("meter", "over_current_l1"),
                       "the constant over-current to trip")
        first = daemon.state.devices["meter"].readings["i_l1_a"]
        assert comp.protection.trips >= 1 and first.value is not None
        await wait_for(lambda: runner.values("ev_b")["p_set_kw"] == 0.0
                       and runner.values("ev_c")["p_set_kw"] == 0.0, "the others zeroed")
        await wait_for(lambda: comp.store.is_active("ev_a", "command:p_set_kw"),
                       "an alarm for the zero ev_a did not take")
        alarm = comp.store.alarms["ev_a:command:p_set_kw"].message
        assert alarm.startswith("ev_a: zero p_set_kw not confirmed: ") and "retrying" in alarm
        assert runner.values("ev_a")["p_set_kw"] == 7.0  # not taken yet
        await runner.clear_fault("ev_a")
        await wait_for(lambda: runner.values("ev_a")["p_set_kw"] == 0.0,
                       "the zero retried until the charger takes it")
        await wait_for(lambda: not comp.store.is_active("ev_a", "command:p_set_kw"),
                       "the alarm cleared once confirmed")
        mine = [o for o in outcomes if o.device == "ev_a" and o.command]
        assert not mine[0].ok and mine[-1].ok and mine[-1].attempt > 1


async def test_after_a_reload_that_replaces_a_device_writes_reach_the_new_one(
        tmp_path: Path) -> None:
    cfg = site(tmp_path, import_limit=60.0, sim={"bat": {"initial_soc_pct": 60}})
    async with running(cfg) as (runner, daemon, comp):
        await wait_for(lambda: "p_set_kw" in comp.applier.devs.get("bat", _none).written,
                       "a first setpoint written to the battery")
        old = LoadedConfig(daemon.cfg, None, tmp_path / "site.yaml")  # type: ignore[arg-type]
        data = daemon.cfg.model_dump(mode="json", exclude_unset=True)
        for d in data["devices"]:
            if d["id"] == "bat":
                d["poll_interval_s"] = POLL_S * 2
        new = LoadedConfig(type(daemon.cfg).model_validate(data), None,  # type: ignore[arg-type]
                           tmp_path / "site.yaml")
        rep = await apply(daemon, old, new)
        assert rep.replaced == ["bat"]
        comp.controller.set_override("bat", "p_set_kw", 7.5, 600, "test")
        await wait_for(lambda: runner.values("bat")["p_set_kw"] == 7.5,
                       "the override written through the new handle")
        assert not comp.store.is_active("bat", "write:p_set_kw")


class _NoDev:
    written: dict[str, object] = {}


_none: Any = _NoDev()
