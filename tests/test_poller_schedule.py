"""The poll schedule (unit tests with fake devices): one task per endpoint, endpoints'
phases spread over the interval by a stable hash, an endpoint's due devices read as one
round and published together with the grid meter last, a bounded number of reads in
flight per endpoint, and skipped slots counted and logged once per episode."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceIO, DeviceTimeout, IOStats, RoundResult
from gateway.model import Invalid, Nature, PointValue
from gateway.poller import Poller, phase_of
from gateway.state import DeviceState, SiteState
from tests.waiting import until


class FakeIO(DeviceIO):
    """Records the loop time of every read; a read can be held until released."""

    def __init__(self, device_id: str, endpoint: str = "tcp://ep", window: int = 1,
                 state: SiteState | None = None) -> None:
        self.device_id = device_id
        self.endpoint = endpoint
        self.stats = IOStats()
        self.pipeline_window = window
        self.started: list[float] = []
        self.hold: asyncio.Event | None = None
        self.in_flight = 0
        self.board: dict[str, int] | None = None  # shared count of reads in flight
        self.state = state
        self.seen: list[dict[str, int]] = []  # at each read: polls SiteState has published

    async def read(self) -> Mapping[str, PointValue | Invalid | None]:
        self.started.append(asyncio.get_running_loop().time())
        if self.state is not None:
            self.seen.append({d: s.health.polls for d, s in self.state.devices.items()})
        board = self.board if self.board is not None else {}
        board["now"] = board.get("now", 0) + 1
        board["max"] = max(board.get("max", 0), board["now"])
        try:
            if self.hold is not None:
                await self.hold.wait()
            else:
                await asyncio.sleep(0)
        finally:
            board["now"] -= 1
        return {"p_kw": 1.0}

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        raise NotImplementedError


def _state(ios: list[FakeIO], grid: str | None = None) -> SiteState:
    state = SiteState()
    for io in ios:
        state.add_device(DeviceState(io.device_id, Nature.METER, max_age_s=60.0,
                                     role="grid" if io.device_id == grid else None))
        io.state = state
    return state


def _poll_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("poll"))


def test_phases_are_stable_and_spread_over_the_interval() -> None:
    ids = [f"dev{i}" for i in range(2000)]
    phases = [phase_of(d, 1.0) for d in ids]
    assert phases == [phase_of(d, 1.0) for d in ids]  # same id, same phase, every run
    assert all(0.0 <= p < 1.0 for p in phases)
    per_tenth = [sum(1 for p in phases if k / 10 <= p < (k + 1) / 10) for k in range(10)]
    assert min(per_tenth) > 150 and max(per_tenth) < 250, per_tenth  # ~200 in each tenth


async def test_one_task_per_endpoint_not_per_device() -> None:
    ios = [FakeIO(f"dev{i}", endpoint=f"tcp://ep{i % 2}") for i in range(20)]
    poller = Poller(_state(ios))
    try:
        for io in ios:
            poller.add(io, 0.5)
        assert _poll_tasks() == ["poll tcp://ep0", "poll tcp://ep1"]
        await until(lambda: all(io.started for io in ios), "a poll of every device")
    finally:
        await poller.stop()
    assert _poll_tasks() == []


async def test_first_polls_follow_the_endpoint_phases_not_the_order_of_adding() -> None:
    interval = 0.4
    ios = [FakeIO(f"meter{i}", endpoint=f"tcp://10.0.0.{i}:502") for i in range(12)]
    poller = Poller(_state(ios))
    loop = asyncio.get_running_loop()
    added = loop.time()
    try:
        for io in ios:
            poller.add(io, interval)
        await until(lambda: all(io.started for io in ios), "a poll of every device")
    finally:
        await poller.stop()
    by_phase = sorted(ios, key=lambda io: (phase_of(io.endpoint, interval) - added) % interval)
    by_start = sorted(ios, key=lambda io: io.started[0])
    assert [io.device_id for io in by_start] == [io.device_id for io in by_phase]
    assert by_start != ios  # the hash reordered them: the check above is not vacuous
    for io in ios:  # nobody is polled before its slot
        slot = added + (phase_of(io.endpoint, interval) - added) % interval
        assert io.started[0] >= slot


async def test_an_endpoint_round_is_published_together_with_the_grid_meter_read_last(
        ) -> None:
    ios = [FakeIO(name) for name in ("grid", "ev1", "ev2", "bat")]
    state = _state(ios, grid="grid")
    poller = Poller(state)
    try:
        for io in ios:
            poller.add(io, 0.3)
        await until(lambda: all(len(io.started) >= 2 for io in ios), "two rounds")
    finally:
        await poller.stop()
    first = sorted(ios, key=lambda io: io.started[0])
    assert first[-1].device_id == "grid"  # added first, read last
    # the whole first round was read before any of it reached SiteState
    assert [sum(io.seen[0].values()) for io in ios] == [0, 0, 0, 0]
    # and the second round was read after all of the first was published
    assert [min(io.seen[1].values()) for io in ios] == [1, 1, 1, 1]


@pytest.mark.parametrize("window", [1, 3])
async def test_reads_in_flight_per_endpoint_are_bounded_by_its_window(window: int) -> None:
    board: dict[str, int] = {}
    hold = asyncio.Event()
    ios = [FakeIO(f"dev{i}", window=window) for i in range(8)]
    for io in ios:
        io.board, io.hold = board, hold
    poller = Poller(_state(ios))
    try:
        for io in ios:
            poller.add(io, 0.0)
        await until(lambda: board.get("now", 0) == window, f"{window} reads in flight")
        hold.set()
        await until(lambda: all(len(io.started) >= 3 for io in ios), "more polls of each")
    finally:
        await poller.stop()
    assert board["max"] == window


async def test_skipped_slots_are_counted_and_logged_once_per_episode(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="autogrid.poller")
    interval = 0.05
    io = FakeIO("slow1")
    io.hold = asyncio.Event()
    poller = Poller(_state([io]), on_time_polls=3)
    loop = asyncio.get_running_loop()
    try:
        poller.add(io, interval)
        for _ in range(2):  # two overruns in one episode
            await until(lambda: len(io.started) and io.hold is not None
                        and not io.hold.is_set(), "a read in flight")
            start = io.started[-1]
            await until(lambda start=start: loop.time() > start + 3.5 * interval,
                        "three slots to pass")
            held, io.hold = io.hold, asyncio.Event()
            held.set()
            polls = len(io.started)
            await until(lambda polls=polls: len(io.started) > polls, "the next poll")
        skipped = io.stats.extra["polls_skipped"]
        assert skipped >= 6  # >= 3 slots per overrun
        assert poller.stats()["skipped"] == skipped
        io.hold.set()
        io.hold = None
        await until(lambda: "back on schedule" in caplog.text, "the end of the episode")
    finally:
        await poller.stop()
    warnings = [r for r in caplog.records if "cannot keep their schedule" in r.message]
    assert len(warnings) == 1
    assert "slow1" in warnings[0].message
    assert poller.stats()["overrunning"] == []


async def test_each_reading_carries_the_time_its_own_device_was_read() -> None:
    """A round is published together, but each reading keeps the wall time its device was
    read: a charger read before a setpoint write must not look as if read after it (control
    compares the two times; stamping the round's end made it count a car at its old power)."""
    import time

    ios = [FakeIO(name) for name in ("grid", "ev1")]
    state = _state(ios, grid="grid")
    ios[0].hold = asyncio.Event()  # the grid meter, read last in the round, waits
    poller = Poller(state)
    try:
        for io in ios:
            poller.add(io, 0.3)
        await until(lambda: len(ios[0].started) >= 1, "the grid meter being read")
        meter_started = time.time()  # ev1's read has ended by now
        await asyncio.sleep(0.05)
        released = time.time()
        ios[0].hold.set()
        await until(lambda: state.devices["grid"].health.polls >= 1, "the round published")
    finally:
        await poller.stop()
    assert len(ios[1].started) >= 1 and ios[1].started[0] <= ios[0].started[0]
    assert state.devices["ev1"].readings["p_kw"].ts <= meter_started
    assert state.devices["grid"].readings["p_kw"].ts >= released


def test_phases_on_a_slot_grid_stay_stable_and_spread() -> None:
    ids = [f"tcp://10.0.{i // 250}.{i % 250}:502" for i in range(2000)]
    phases = [phase_of(d, 1.0, 0.02) for d in ids]
    assert phases == [phase_of(d, 1.0, 0.02) for d in ids]
    for d, p in zip(ids, phases, strict=True):
        assert 0.0 <= p < 1.0
        assert abs(p / 0.02 - round(p / 0.02)) < 1e-9  # on the grid
        assert phase_of(d, 1.0) - 0.02 < p <= phase_of(d, 1.0)  # the slot it falls in
    per_slot = [phases.count(k * 0.02) for k in range(50)]
    assert sum(per_slot) == 2000 and min(per_slot) > 15 and max(per_slot) < 70, per_slot
    assert phase_of("x", 0.01, 0.02) == phase_of("x", 0.01)  # a slot wider than the interval


async def test_endpoints_of_one_slot_share_their_due_time_and_keep_exact_periods() -> None:
    interval, slot = 0.2, 0.05
    keys = [f"tcp://10.0.0.{i}:502" for i in range(40)]
    by_slot: dict[float, list[str]] = {}
    for k in keys:
        by_slot.setdefault(phase_of(k, interval, slot), []).append(k)
    assert len(by_slot) == 4 and all(len(v) > 1 for v in by_slot.values()), by_slot
    ios = [FakeIO(f"dev{i}", endpoint=k) for i, k in enumerate(keys)]
    poller = Poller(_state(ios), slot_s=slot)
    firsts: dict[str, float] = {}
    try:
        for io in ios:
            poller.add(io, interval)
            firsts[io.device_id] = poller.jobs[io.device_id].due
            await asyncio.sleep(0.003)  # added at different times, as a daemon does
        await until(lambda: all(len(io.started) >= 5 for io in ios), "five polls of each")
    finally:
        await poller.stop()
    for phase, members in by_slot.items():
        # the endpoints of one slot are due on one lattice (phase + k intervals), so their
        # timers fire together, in one loop pass, however far apart they were added
        for io in ios:
            if io.endpoint in members:
                k = (firsts[io.device_id] - phase) / interval
                assert abs(k - round(k)) < 1e-9, (io.endpoint, k)
    for io in ios:
        rounds = [(t - firsts[io.device_id]) / interval for t in io.started]
        assert rounds[0] >= -1e-9  # never before its slot
        # one poll per interval, each in its own: the period holds over the rounds
        slots = [math.floor(r + 1e-9) for r in rounds]
        assert all(b > a for a, b in itertools.pairwise(slots)), rounds


def test_the_slot_grid_is_a_gateway_setting_with_a_positioned_error(tmp_path: Path) -> None:
    from io import StringIO

    from gateway.config.loader import run_check

    path = tmp_path / "site.yaml"
    path.write_text("site: {name: x}\ngateways:\n  - {id: gw1, poll_slot_s: 5}\n")
    out = StringIO()
    assert run_check(str(path), out) == 1
    lines = out.getvalue().replace(str(path), "site.yaml").splitlines()
    assert lines[0].startswith("site.yaml:3:") and "gateways[0].poll_slot_s" in lines[0], lines
    assert len(lines) == 2 and "Traceback" not in out.getvalue()
    path.write_text("site: {name: x}\ngateways:\n  - {id: gw1, poll_slot_s: 0.05}\n")
    assert run_check(str(path), StringIO()) == 0


class RoundIO(FakeIO):
    """A fake device whose driver reads rounds: ``reader`` answers for a prefix."""

    def __init__(self, device_id: str, reader: Any) -> None:
        super().__init__(device_id)
        self.read_round = reader


class PrefixReader:
    """Reads the first device of a round, fails the second, leaves the rest."""

    def __init__(self) -> None:
        self.rounds: list[list[str]] = []

    async def __call__(self, ios: Sequence[DeviceIO]) -> list[RoundResult]:
        self.rounds.append([io.device_id for io in ios])
        return [(1.5, {"p_kw": 7.0}, 1000.0),
                (-1.0, DeviceTimeout(f"no answer from {ios[1].device_id}"), 1001.0)]


async def test_a_round_read_by_the_driver_is_published_and_the_rest_read_one_by_one(
        ) -> None:
    reader = PrefixReader()
    ios = [RoundIO(name, reader) for name in ("a", "b", "c")]
    state = _state(ios)
    poller = Poller(state)
    try:
        for io in ios:
            poller.add(io, 0.3)
        await until(lambda: state.devices["c"].health.polls >= 1, "a round published")
    finally:
        await poller.stop()
    assert reader.rounds[0] == ["a", "b", "c"]
    assert (len(ios[0].started), len(ios[1].started)) == (0, 0)  # the driver read them
    assert len(ios[2].started) >= 1  # left out of the round: read on its own
    assert state.devices["a"].readings["p_kw"].value == 7.0
    assert state.devices["a"].readings["p_kw"].ts == 1000.0
    assert state.devices["b"].health.last_error == "no answer from b"
    assert state.devices["c"].readings["p_kw"].value == 1.0


async def test_a_round_that_raises_is_logged_and_every_device_read_on_its_own(
        caplog: pytest.LogCaptureFixture) -> None:
    async def broken(ios: Sequence[DeviceIO]) -> list[RoundResult]:
        raise RuntimeError("driver bug")

    mixed = PrefixReader()
    ios = [RoundIO("a", broken), RoundIO("b", broken)]
    others = [RoundIO("x", mixed), RoundIO("y", broken)]
    for io in others:
        io.endpoint = "tcp://other"
    state = _state([*ios, *others])
    poller = Poller(state)
    try:
        for io in [*ios, *others]:
            poller.add(io, 0.3)
        await until(lambda: all(state.devices[io.device_id].health.polls >= 1
                                for io in [*ios, *others]), "every device read")
    finally:
        await poller.stop()
    assert "unexpected error from driver reading a round" in caplog.text
    assert all(len(io.started) >= 1 for io in [*ios, *others])
    assert mixed.rounds == []  # devices of one endpoint with different readers: no round
