"""Batching on a pipelined Modbus TCP link (``max_in_flight`` > 1), through the real
poller against a scripted Modbus TCP server on loopback: the devices of one endpoint that
fall in one slot send their requests in one write, and a device that does not answer in
such a batch holds none of the others."""

from __future__ import annotations

from typing import Any

from test_modbus_driver_support import config_device
from test_modbus_pipeline import ONE_BLOCK, ScriptedServer

from drivers.modbus.device import ModbusDeviceIO
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.pipeline import PipelinedEndpoint
from gateway.model import Nature
from gateway.poller import Poller
from gateway.state import DeviceState, SiteState
from tests.waiting import until


def _site(drv: ModbusDriver, server: ScriptedServer, units: range,
          **conn: Any) -> tuple[SiteState, list[ModbusDeviceIO]]:
    state = SiteState()
    ios = []
    for u in units:
        io = drv.attach(config_device(f"m{u}", unit=u), ONE_BLOCK, server.conn(**conn))
        state.add_device(DeviceState(io.device_id, Nature.METER, max_age_s=60.0))
        ios.append(io)
    return state, ios


def _endpoint(drv: ModbusDriver) -> PipelinedEndpoint:
    (ep,) = drv.endpoints.values()
    assert isinstance(ep, PipelinedEndpoint)
    return ep


async def test_the_devices_of_an_endpoint_in_one_slot_go_out_in_one_write() -> None:
    server = await ScriptedServer().start()
    server.auto = True
    drv = ModbusDriver()
    state, ios = _site(drv, server, range(1, 11), max_in_flight=16)
    poller = Poller(state)
    try:
        for io in ios:
            poller.add(io, 0.2)
        ep = _endpoint(drv)

        def between_rounds(polls: int) -> bool:
            return (all(state.devices[io.device_id].health.polls >= polls for io in ios)
                    and not any(job.reading for job in poller.jobs.values()))

        # the first round may take two writes: reads that waited for the connection to
        # open resume a loop pass after the one that opened it
        await until(lambda: between_rounds(1), "a first round, then none in flight")
        requests0, writes0 = sum(io.stats.requests for io in ios), ep.writes
        await until(lambda: between_rounds(4), "three more rounds, then none in flight")
        await poller.stop()
        requests = sum(io.stats.requests for io in ios) - requests0
        writes = ep.writes - writes0
        assert requests >= 30
        # one write per round carrying all ten devices' requests, not one per device
        assert requests == 10 * writes, (requests, writes)
        assert all(state.devices[io.device_id].health.errors == 0 for io in ios)
        assert server.connects == 1
    finally:
        await poller.stop()
        await drv.close()
        await server.stop()


async def test_one_request_at_a_time_still_writes_each_request_alone() -> None:
    server = await ScriptedServer().start()
    server.auto = True
    drv = ModbusDriver()
    _, ios = _site(drv, server, range(1, 4))  # max_in_flight 1, the default
    try:
        for io in ios:
            await io.read()
        assert _endpoint(drv).writes == sum(io.stats.requests for io in ios) == 3
        assert server.max_waiting == 1
    finally:
        await drv.close()
        await server.stop()


async def test_a_device_that_does_not_answer_in_a_batch_holds_none_of_the_others() -> None:
    server = await ScriptedServer().start()
    drv = ModbusDriver()
    state, ios = _site(drv, server, range(1, 4), max_in_flight=8, timeout_s=30.0)
    poller = Poller(state)
    m1, m2, m3 = (state.devices[f"m{u}"].health for u in range(1, 4))
    try:
        server.auto = True  # the first round (it opens the connection) is answered
        for io in ios:
            poller.add(io, 1.0)
        await until(lambda: m1.polls == m2.polls == m3.polls == 1, "a first round")
        server.auto = False
        await until(lambda: len(server.waiting) == 3, "the second round's requests")
        # answer units 1 and 3; unit 2 stays silent (its read waits for its deadline)
        server.waiting.sort(key=lambda wf: wf[1][6] == 2)
        server.answer(2)
        await until(lambda: m1.polls == 2 and m3.polls == 2, "m1 and m3 published")
        assert m2.polls == 1 and m2.errors == 0  # still in flight, not failed
        assert poller.jobs["m2"].reading
        server.answer(1)  # the late one answers: it is published too
        await until(lambda: m2.polls == 2, "m2 published")
        assert m2.errors == 0
    finally:
        await poller.stop()
        await drv.close()
        await server.stop()


class _SilentUnit(ScriptedServer):
    """Answers every request at once, except those to one unit, which it never answers."""

    def __init__(self, silent: int) -> None:
        super().__init__()
        self.silent = silent
        self.auto = True

    def answer(self, n: int = 1) -> None:
        self.waiting = [wf for wf in self.waiting if wf[1][6] != self.silent]
        super().answer(min(n, len(self.waiting)))


async def test_a_timed_out_device_in_a_batch_leaves_the_others_reading() -> None:
    server = await _SilentUnit(silent=2).start()
    drv = ModbusDriver()
    state, ios = _site(drv, server, range(1, 4), max_in_flight=8, timeout_s=0.2)
    poller = Poller(state)
    m1, m2, m3 = (state.devices[f"m{u}"].health for u in range(1, 4))
    try:
        for io in ios:
            poller.add(io, 0.4)
        await until(lambda: m2.consecutive_errors >= 2 and m1.polls >= 3 and m3.polls >= 3,
                    "two timeouts of m2 and three reads of the others")
        assert m2.polls == m2.errors  # never a good read
        assert "no answer within 0.2 s" in (m2.last_error or "")
        # the others were read in the same batches, every time, and never failed with it
        assert m1.errors == 0 and m3.errors == 0
        assert state.devices["m1"].readings["v_v"].value == 230.0
    finally:
        await poller.stop()
        await drv.close()
        await server.stop()
