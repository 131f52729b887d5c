"""The setpoint applier: dead-band, rewrite at half the device watchdog, reductions first,
WriteError as an alarm (cleared by the next good write); config references checked."""

from __future__ import annotations

import asyncio

from control_fakes import site_config

from drivers.base import DeviceIO, IOStats, WriteError
from gateway.control.alarms import ControlStore
from gateway.control.applier import Applier
from gateway.control.config import ControlConfig, reference_problems
from gateway.model import Nature, PointValue
from gateway.state import DeviceState, SiteState


class MemoryDevice(DeviceIO):
    """A device that keeps what is written; refuses while ``refuse`` is set."""

    def __init__(self, device_id: str, log: list[tuple[str, str, PointValue]]) -> None:
        self.device_id = device_id
        self.endpoint = "memory"
        self.stats = IOStats()
        self.log = log
        self.refuse = False

    async def read(self) -> dict[str, PointValue | None]:
        return {}

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        if self.refuse:
            raise WriteError(f"{self.device_id}: read-back differs")
        self.log.append((self.device_id, point, value))
        return value


def setup() -> tuple[Applier, list[tuple[str, str, PointValue]], dict[str, MemoryDevice]]:
    state = SiteState()
    state.add_device(DeviceState("bat", Nature.BESS, 10.0))
    state.add_device(DeviceState("ev", Nature.EVSE, 10.0))
    state.update("bat", {"watchdog_s": 4.0}, 0.0)
    log: list[tuple[str, str, PointValue]] = []
    ios = {d: MemoryDevice(d, log) for d in ("bat", "ev")}
    store = ControlStore(None)
    return Applier(ios, state, store, rewrite_s=30.0), log, ios  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_deadband_and_rewrite_before_the_watchdog() -> None:
    ap, log, _ = setup()
    try:
        ap.submit({"bat": {"p_set_kw": 10.0}}, now=100.0)
        await settle()
        assert log == [("bat", "p_set_kw", 10.0)]
        assert ap.rewrite_interval("bat") == 2.0 and ap.rewrite_interval("ev") == 30.0
        ap.submit({"bat": {"p_set_kw": 10.1}}, now=100.5)  # within the dead-band
        await settle()
        assert len(log) == 1 and ap.skipped == 1
        ap.submit({"bat": {"p_set_kw": 0.0}}, now=100.6)  # to zero: always written
        await settle()
        assert log[-1] == ("bat", "p_set_kw", 0.0)
        ap.devs["bat"].written["p_set_kw"] = (0.0, 0.0)  # written long ago
        ap.submit({"bat": {"p_set_kw": 0.0}})  # same value, but half the watchdog passed
        await settle()
        assert len(log) == 3
    finally:
        await ap.stop()


async def test_reductions_are_written_first() -> None:
    ap, log, _ = setup()
    try:
        ap.submit({"ev": {"p_set_kw": 5.0}, "bat": {"p_set_kw": 5.0}}, now=0.0)
        await settle()
        log.clear()
        ap.submit({"ev": {"p_set_kw": 11.0}, "bat": {"p_set_kw": 0.0}}, now=1.0)
        await settle()
        assert [d for d, _, _ in log] == ["bat", "ev"]  # battery discharge down = import up
        log.clear()
        ap.submit({"ev": {"p_set_kw": 1.0}, "bat": {"p_set_kw": 10.0}}, now=2.0)
        await settle()
        assert [d for d, _, _ in log] == ["ev", "bat"]
    finally:
        await ap.stop()


async def test_write_error_is_an_alarm_not_a_crash() -> None:
    ap, log, ios = setup()
    try:
        ios["ev"].refuse = True
        ap.submit({"ev": {"p_set_kw": 7.0}}, now=0.0)
        await settle()
        assert ap.errors == 1 and ap.store.is_active("ev", "write:p_set_kw")
        ios["ev"].refuse = False
        ap.command("ev", "p_set_kw", 0.0)
        await settle()
        assert not ap.store.is_active("ev", "write:p_set_kw") and log == [("ev", "p_set_kw", 0.0)]
    finally:
        await ap.stop()


def test_control_references_are_checked() -> None:
    cfg = site_config()
    natures = {d.id: str(d.nature) for d in cfg.devices}
    bad = ControlConfig.model_validate({"emergency": {"pcc_breaker": "meter",
                                                      "estop_open_breakers": ["nope"]},
                                        "protection": {"critical": ["ghost"]}})
    assert reference_problems(bad, natures) == [
        "control.emergency.pcc_breaker: 'meter' is not a breaker of this site",
        "control.emergency.estop_open_breakers[0]: no device 'nope'",
        "control.protection.critical[0]: no device 'ghost'"]
    good = ControlConfig.model_validate({"emergency": {"pcc_breaker": "pcc"}})
    assert reference_problems(good, natures) == []


async def test_nothing_is_written_after_stop() -> None:
    """Shutdown stops control before the cluster component, whose watch may still hand the
    applier a setpoint: it must not reach the device (nor start a writer that outlives the
    applier, to write after the daemon's safe setpoints)."""
    ap, log, _ = setup()
    await ap.stop()
    assert ap.submit({"bat": {"p_set_kw": 10.0}}, now=100.0) == 0
    fut = ap.command("ev", "p_set_kw", 0.0)
    assert fut is not None and fut.done()
    out = fut.result()
    assert not out.ok and not out.sent and out.error == "control stopped: not written"
    await settle()
    assert log == [] and all(d.task is None for d in ap.devs.values())
