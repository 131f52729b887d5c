"""The one write path, with fake devices: only what a device took counts as written;
failed writes are retried with a capped backoff; protection's commands are retried until
confirmed (sooner when the device comes back), with an alarm while they are not; every
write uses the device handle the daemon holds now; outcomes reach the controller."""

from __future__ import annotations

from drivers.base import DeviceIO, DeviceOffline, IOStats, WriteError
from gateway.control.alarms import ControlStore
from gateway.control.applier import Applier, WriteOutcome
from gateway.model import Nature, PointValue
from gateway.state import DeviceState, SiteState
from tests.waiting import until


class FlakyDevice(DeviceIO):
    """Refuses the first ``fail`` writes, then takes every write (read-back = value)."""

    def __init__(self, device_id: str, fail: int = 0, error: type[Exception] = WriteError
                 ) -> None:
        self.device_id = device_id
        self.endpoint = "memory"
        self.stats = IOStats()
        self.fail = fail
        self.error = error
        self.attempts: list[tuple[str, PointValue]] = []
        self.taken: list[tuple[str, PointValue]] = []

    async def read(self) -> dict[str, PointValue | None]:
        return {}

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        self.attempts.append((point, value))
        if self.fail > 0:
            self.fail -= 1
            raise self.error(f"{self.device_id}: device busy (exception 6)")
        self.taken.append((point, value))
        return value


def make(ios: dict[str, DeviceIO], retry_max_s: float = 0.05
         ) -> tuple[Applier, SiteState, list[WriteOutcome]]:
    state = SiteState()
    for dev_id in ios:
        state.add_device(DeviceState(dev_id, Nature.BESS, 10.0))
    ap = Applier(ios, state, ControlStore(None), rewrite_s=30.0, retry_max_s=retry_max_s,
                 retry_first_s=0.01)
    outcomes: list[WriteOutcome] = []
    ap.on_outcome.append(outcomes.append)
    return ap, state, outcomes


async def test_a_failed_setpoint_is_not_recorded_and_is_retried_until_taken() -> None:
    dev = FlakyDevice("bat", fail=3)
    ap, _, outcomes = make({"bat": dev})
    try:
        ap.submit({"bat": {"p_set_kw": 10.0}}, now=100.0)
        await until(lambda: outcomes and not outcomes[0].ok, "the first failure")
        assert "p_set_kw" not in ap.devs["bat"].written  # the device did not take it
        assert ap.store.is_active("bat", "write:p_set_kw")
        # the same value again is not skipped as 'already written'
        assert ap.submit({"bat": {"p_set_kw": 10.0}}, now=100.1) == 1
        await until(lambda: dev.taken == [("p_set_kw", 10.0)], "the retry taken")
        assert len(dev.attempts) == 4 and [o.ok for o in outcomes] == [False] * 3 + [True]
        assert ap.devs["bat"].written["p_set_kw"][0] == 10.0
        assert not ap.store.is_active("bat", "write:p_set_kw")
    finally:
        await ap.stop()


async def test_a_protection_zero_is_retried_until_confirmed_and_alarmed_meanwhile() -> None:
    dev = FlakyDevice("battery1", fail=2)
    ap, _, outcomes = make({"battery1": dev})
    try:
        ap.submit({"battery1": {"p_set_kw": 20.0}}, now=0.0)
        dev.fail = 0
        await until(lambda: dev.taken == [("p_set_kw", 20.0)], "the setpoint")
        dev.fail = 2
        fut = ap.command("battery1", "p_set_kw", 0.0)
        assert fut is not None
        first = await fut
        assert not first.ok and "device busy" in (first.error or "")
        alarm = ap.store.alarms["battery1:command:p_set_kw"]
        assert alarm.active and alarm.message == ("battery1: zero p_set_kw not confirmed: "
                                                  "battery1: device busy (exception 6); "
                                                  "retrying")
        # the controller's next setpoint does not displace the unconfirmed zero
        ap.submit({"battery1": {"p_set_kw": 20.0}}, now=1000.0)
        await until(lambda: dev.taken[-1:] == [("p_set_kw", 0.0)], "the zero confirmed")
        assert dev.taken == [("p_set_kw", 20.0), ("p_set_kw", 0.0)]
        assert not ap.store.alarms["battery1:command:p_set_kw"].active
        assert [o.ok for o in outcomes if o.command] == [False, False, True]
    finally:
        await ap.stop()


async def test_a_command_to_an_offline_device_goes_out_when_it_is_back() -> None:
    dev = FlakyDevice("bat", fail=1, error=DeviceOffline)
    ap, state, _ = make({"bat": dev}, retry_max_s=3600.0)
    ap.retry_first_s = 3600.0  # only the device coming back may trigger the retry
    try:
        state.fail("bat", "connection refused", 1.0)
        fut = ap.command("bat", "p_set_kw", 0.0)
        assert fut is not None and not (await fut).ok
        assert ap.pending("bat") == {"p_set_kw": 0.0}
        state.update("bat", {"soc_pct": 50.0}, 2.0)  # polled again: online
        await until(lambda: dev.taken == [("p_set_kw", 0.0)], "the zero after recovery")
        assert ap.pending("bat") == {}
    finally:
        await ap.stop()


async def test_every_write_uses_the_handle_the_daemon_holds_now() -> None:
    old = FlakyDevice("bat")
    ios: dict[str, DeviceIO] = {"bat": old}
    ap, _, _ = make(ios)
    try:
        ap.submit({"bat": {"p_set_kw": 5.0}}, now=0.0)
        await until(lambda: old.taken, "the first write")
        new = FlakyDevice("bat")
        ios["bat"] = new  # a reload replaced the device
        ap.forget("bat")
        ap.submit({"bat": {"p_set_kw": 5.0}}, now=1.0)  # same value: the new one needs it
        await until(lambda: new.taken == [("p_set_kw", 5.0)], "the write to the new handle")
        assert old.taken == [("p_set_kw", 5.0)]
    finally:
        await ap.stop()


async def test_a_breaker_close_ends_the_retries_of_an_unconfirmed_trip() -> None:
    dev = FlakyDevice("pcc", fail=1000)
    ap, _, _ = make({"pcc": dev}, retry_max_s=0.05)
    try:
        trip = ap.command("pcc", "trip", True)
        assert trip is not None and not (await trip).ok
        dev.fail = 0
        close = ap.command("pcc", "close", True)
        assert close is not None and (await close).ok
        assert ap.pending("pcc") == {} and ("trip", True) not in dev.taken
        assert not ap.store.is_active("pcc", "command:trip")
    finally:
        await ap.stop()
