"""Poll rounds on a lean Modbus TCP link with one request at a time.

The poller reads the devices of an endpoint that are due together one after the other.
Read one by one, each device's read is an exchange of its own: its task sends the first
request, sleeps, wakes when the last answer is in, decodes, and only then sends the next
device's first request, one extra loop pass per device. As a round, the link sends the
next device's first request from the callback that received the last answer of the one
before (``PipelinedEndpoint.read_round``): the whole round wakes the poller once. What
each device's read means does not change: the same requests in the same order on the
wire, one at a time, its own deadline, values, errors and statistics, and a write that
waits for the link goes next, between two devices, as it would between two reads.

Not used where a device's read is more than one exchange: with ``retries`` > 0 (a retry
repeats one device's read) or on a pipelined link (``max_in_flight`` > 1, whose reads
already leave together). A device whose block is refused ILLEGAL DATA ADDRESS ends the
round before it: its plan is split and it is read again on its own, as a plain read would.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter, time

from drivers.base import DeviceIO, DriverError, RoundResult
from drivers.modbus.device import ModbusDeviceIO
from drivers.modbus.pipeline import PipelinedEndpoint


class ModbusRounds:
    """The ``read_round`` of every device of one lean Modbus TCP endpoint."""

    def __init__(self, ep: PipelinedEndpoint) -> None:
        self.ep = ep

    async def __call__(self, ios: Sequence[DeviceIO]) -> list[RoundResult]:
        """Read ``ios`` as one round; the results of a prefix of them (see DeviceIO)."""
        ep = self.ep
        if ep.window != 1 or ep.conn.retries or len(ios) < 2:
            return []  # pipelined links send reads together; retries are per device
        devs: list[ModbusDeviceIO] = []
        for io in ios:
            if not isinstance(io, ModbusDeviceIO) or io.read_round is not self \
                    or not io.attached:
                return []
            devs.append(io)
        plans = [ep.plan_of(io.plan, io.unit) for io in devs]
        t0 = perf_counter()
        try:
            answers, marks, error = await ep.read_round(
                plans, [io.stats for io in devs], [io.device_id for io in devs])
        except DriverError:
            return []  # the link cannot be used now: each device's own read says why
        out: list[RoundResult] = []
        for io, plan, pdus, (t_end, wall) in zip(devs, plans, answers, marks, strict=False):
            try:
                values = io.values_of(ep.registers(plan, pdus, io.device_id))
            except DriverError as exc:
                if io.read_failed(exc):
                    return out  # its plan was split: it is read again on its own
                out.append(((t_end - t0) * 1000.0, exc, wall))
            else:
                out.append(((t_end - t0) * 1000.0, values, wall))
            t0 = t_end
        if error is not None:
            devs[len(answers)].read_failed(error)
            out.append(((perf_counter() - t0) * 1000.0, error, time()))
        return out
