"""The write path through a real daemon and simulated Modbus devices on loopback: an
over-current held constant trips after its delay, a protection zero the charger first
refuses is retried until the charger takes it, and after a reload that replaces a device
the writes reach the new device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.apiclient import ApiClient, ApiRequestError
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


async def test_api_overrides_and_breaker_commands_answer_with_what_the_device_took(
        tmp_path: Path) -> None:
    cfg = site(tmp_path, import_limit=60.0, sim={"bat": {"initial_soc_pct": 60}},
               control={"emergency": {"pcc_breaker": "pcc", "reconnect_delay_s": 0.3,
                                      "step_delay_s": 0.1}})
    async with running(cfg) as (runner, daemon, comp):
        await wait_for(lambda: "bat" in comp.controller.visible
                       and comp.controller.grid_ok is True, "control running")
        async with ApiClient(daemon.socket_path) as api:
            status = await api.request("control_status")  # the console refuses on it
            assert status["pcc_breaker"] == "pcc"
            r = await api.request("override_set", device="bat", point="p_set_kw", value=4.0,
                                  duration_s=600)
            assert r["written"] is True and r["read_back"] == 4.0 and r["at"] > 0
            assert runner.values("bat")["p_set_kw"] == 4.0
            for bad, why in ((float("nan"), "finite"), (float("inf"), "finite")):
                with pytest.raises(ApiRequestError, match=why):
                    await api.request("override_set", device="bat", point="p_set_kw",
                                      value=bad)
            with pytest.raises(ApiRequestError, match="not a setpoint"):
                await api.request("override_set", device="meter", point="p_kw", value=1)
            r = await api.request("override_set", device="pcc", point="trip", value=True)
            assert r["command"] is True and r["written"] is True
            await wait_for(lambda: runner.values("pcc")["closed"] is False, "the PCC open")
            assert ("pcc", "trip") not in comp.controller.overrides  # one-shot, not held
            r = await api.request("override_set", device="pcc", point="close", value=True)
            assert r["written"] is True
            await wait_for(lambda: runner.values("pcc")["closed"] is True, "the PCC closed")

            # an island an operator asks for whose trip the breaker refuses: said, retried
            await runner.set_fault("pcc", "exception", code=4)
            with pytest.raises(ApiRequestError, match="not islanded until it does"):
                await api.request("mode_request", mode="island", reason="drill")
            assert runner.values("pcc")["closed"] is True
            await runner.clear_fault("pcc")
            await wait_for(lambda: runner.values("pcc")["closed"] is False,
                           "the trip retried until the breaker opened")
            await wait_for(lambda: not comp.store.is_active("pcc", "command:trip"),
                           "the unconfirmed-trip alarm cleared")
            # the grid is healthy well past reconnect_delay_s: the operator's island holds
            seen = comp.controller.cycles
            await wait_for(lambda: comp.controller.cycles > seen + 10, "ten more cycles")
            assert comp.controller.modes.mode == "island"
            await api.request("mode_request", mode="reconnect")
            await wait_for(lambda: comp.controller.modes.mode == "normal", "reconnected")
            audit = await api.request("audit")
            assert ("mode_request", False) in [(e["action"], e["ok"]) for e in audit]


async def test_shed_and_restore_answer_with_what_the_load_took(tmp_path: Path) -> None:
    cfg = site(tmp_path, import_limit=200.0)
    async with running(cfg) as (runner, daemon, comp):
        await wait_for(lambda: runner.values("heater")["enabled"] is True
                       and comp.daemon.state.devices["heater"].health.last_ok is not None,
                       "the heater on and polled")
        async with ApiClient(daemon.socket_path) as api:
            r = await api.request("shed", load="heater", duration_s=600)
            assert r["written"] is True and r["read_back"] is False
            assert runner.values("heater")["enabled"] is False
            r = await api.request("restore", load="heater")
            assert r["restored"] == "heater" and r["enabled"] is True
            assert runner.values("heater")["enabled"] is True
            with pytest.raises(ApiRequestError, match="not a load"):
                await api.request("shed", load="bat")


async def test_acknowledging_an_alarm_twice_writes_one_audit_row(tmp_path: Path) -> None:
    cfg = site(tmp_path, import_limit=200.0)
    async with running(cfg) as (_runner, daemon, comp):
        comp.store.raise_("bat", "drill", "warning", "a drill alarm")
        async with ApiClient(daemon.socket_path) as api:
            first = await api.request("alarm_ack", key="bat:drill")
            second = await api.request("alarm_ack", key="bat:drill")
            assert first["acked_by"] == second["acked_by"] and "already_acknowledged" not in first
            assert second["already_acknowledged"] is True
            with pytest.raises(ApiRequestError, match="unknown alarm"):
                await api.request("alarm_ack", key="bat:nothing")
            rows = [e for e in await api.request("audit") if e["action"] == "alarm_ack"]
            assert [e["ok"] for e in rows] == [False, True]  # newest first
