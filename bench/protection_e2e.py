"""End-to-end protection latency: from a value changing at the simulated device to the
protection command arriving at the simulated device, measured by the simulator's own
clock on both ends; the bare protocol round trip on the same devices in the same run.

Used by bench/control.py. The simulated site runs in its own process; that process
changes the PCC meter's phase current to twice its rating at a random moment (the meter
serves it from the next request on), and notes when a ``p_set_kw`` write reaches the EV
charger (the over-current rule zeroes the chargers). The site controller is off, so the
only writer of ``p_set_kw`` is protection. A trip is only re-armed once the daemon has
seen the healthy value again (protection ``reset_after_s`` = 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.config.models import SiteConfig

I_MAX_A = 63.0


def site_config(poll_s: float, socket: Path) -> SiteConfig:
    """Meter (PCC, rated 63 A), battery and EV charger on one Modbus TCP endpoint."""
    return SiteConfig.model_validate({
        "site": {"name": "bench-protection", "latitude": 48.1, "longitude": 11.6,
                 "grid": {"import_limit_kw": 100, "export_limit_kw": 50}},
        "gateways": [{"id": "gw1", "api_socket": str(socket)}],
        "connections": [{"id": "ep", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1,
                         "timeout_s": 1.0}],
        "devices": [
            {"id": "meter", "nature": "meter", "template": "meter_3ph", "connection": "ep",
             "unit_id": 1, "role": "grid", "poll_interval_s": poll_s,
             "ratings": {"i_max_a": I_MAX_A}},
            {"id": "battery", "nature": "bess", "template": "generic_bess",
             "connection": "ep", "unit_id": 2, "poll_interval_s": poll_s,
             "ratings": {"capacity_kwh": 50, "p_max_kw": 25}},
            {"id": "charger", "nature": "evse", "template": "generic_evse",
             "connection": "ep", "unit_id": 3, "poll_interval_s": poll_s,
             "ratings": {"p_max_kw": 11}}],
        "historian": {"enabled": False},
        "control": {"controller": False,
                    "protection": {"current_delay_s": 0, "reset_after_s": 0}},
        "simulation": {"seed": 1, "clock": {"start": "2025-06-21T12:00:00+02:00"}}})


class _Trigger:
    """In the simulator process: the meter's current goes over the limit on ``arm()``;
    the charger's next ``p_set_kw`` write is the protection command arriving."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.over = False
        self.changed_at: float | None = None
        self.arrived_at: float | None = None
        self.arrived = asyncio.Event()
        meter = runner.images["meter"]
        charger = runner.images["charger"]
        read, write = meter.model.read_points, charger.model.write_point

        def read_points() -> dict[str, Any]:
            pts = dict(read())
            if self.over:
                pts["i_l1_a"] = 2 * I_MAX_A
            return pts

        def write_point(point: str, value: Any) -> Any:
            if point == "p_set_kw" and self.changed_at is not None \
                    and self.arrived_at is None:
                self.arrived_at = time.time()
                self.arrived.set()
            return write(point, value)

        meter.model.read_points = read_points
        charger.model.write_point = write_point

    def set_over(self, over: bool) -> float:
        self.over = over
        self.runner.generation.value += 1  # served from the next request on
        return time.time()


def _sim_main(cfg_json: str, pipe: Connection) -> None:
    from sim_devices.runner import SimRunner

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def main() -> None:
        cfg = SiteConfig.model_validate_json(cfg_json)
        runner = SimRunner(cfg, port_overrides={c.id: 0 for c in cfg.connections})
        pipe.send(await runner.start())
        trig = _Trigger(runner)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.add_reader(pipe.fileno(), lambda: inbox.put_nowait(pipe.recv()))
        try:
            while True:
                msg = await asyncio.wait_for(inbox.get(), 600)
                if msg[0] == "stop":
                    return
                if msg[0] == "trip":  # ("trip", timeout_s): one over-current episode
                    trig.arrived_at = None
                    trig.arrived.clear()
                    trig.changed_at = trig.set_over(True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(trig.arrived.wait(), msg[1])
                    trig.set_over(False)
                    pipe.send((trig.changed_at, trig.arrived_at))
                    trig.changed_at = None
        finally:
            loop.remove_reader(pipe.fileno())
            await runner.stop()

    asyncio.run(main())


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def _rpc(pipe: Connection, msg: tuple[Any, ...], timeout_s: float) -> Any:
    pipe.send(msg)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Any] = loop.create_future()
    loop.add_reader(pipe.fileno(), lambda: answer.done() or answer.set_result(pipe.recv()))
    try:
        return await asyncio.wait_for(answer, timeout_s)
    except TimeoutError:
        raise RuntimeError(f"simulator did not answer {msg[0]!r}") from None
    finally:
        loop.remove_reader(pipe.fileno())


async def _until(state: Any, cond: Callable[[], bool], timeout_s: float) -> bool:
    """Wait (bounded) until ``cond()`` holds, checked after every poll of any device."""
    if cond():
        return True
    hit = asyncio.Event()
    unsub = state.on_poll(lambda *_: hit.set() if cond() else None)
    try:
        await asyncio.wait_for(hit.wait(), timeout_s)
        return True
    except TimeoutError:
        return False
    finally:
        unsub()


async def _gateway_round(cfg: SiteConfig, pipe: Connection, trips: int, poll_s: float
                         ) -> dict[str, Any]:
    from gateway.control.component import ControlComponent
    from gateway.daemon import Daemon

    daemon = Daemon(cfg)
    await daemon.start()
    lat: list[float] = []
    missed = 0
    try:
        comp = next(c for c in daemon.components if isinstance(c, ControlComponent))
        meter = daemon.state.devices["meter"]
        await _until(daemon.state, lambda: meter.health.last_ok is not None, 10)
        comp.protection.latencies_ms.clear()
        for _ in range(trips):
            await asyncio.sleep(random.uniform(0, poll_s))  # random phase against the poll
            changed, arrived = await _rpc(pipe, ("trip", 4 * poll_s + 2.0), 4 * poll_s + 5)
            if arrived is None:
                missed += 1
            else:
                lat.append((arrived - changed) * 1000.0)
            # re-armed once protection has seen the healthy value again
            await _until(daemon.state, lambda: not comp.protection.active, 4 * poll_s + 2)
        inproc = list(comp.protection.latencies_ms)
    finally:
        await daemon.shutdown()
    return {"e2e_ms": lat, "missed": missed, "inproc_ms": inproc}


async def _bare_round(port: int, n: int) -> list[float]:
    """The floor: one bare pymodbus read of the meter's current + one write to the charger
    (the two requests protection needs), back to back, on the same simulated devices."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0)
    await client.connect()
    out: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            await client.read_input_registers(6, count=2, device_id=1)
            await client.write_registers(0, [0, 0], device_id=3)
            out.append((time.perf_counter() - t0) * 1000.0)
    finally:
        client.close()
    return out


def measure(poll_s: float, rounds: int, trips: int) -> dict[str, Any]:
    """Interleaved rounds of gateway trips and bare round trips; the simulator in its own
    process for the whole run."""
    with tempfile.TemporaryDirectory(prefix="autogrid-bench-prot-") as tmp:
        cfg = site_config(poll_s, Path(tmp) / "api.sock")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        sim = ctx.Process(target=_sim_main, args=(cfg.model_dump_json(), child), daemon=True)
        sim.start()
        res: dict[str, Any] = {"e2e_ms": [], "inproc_ms": [], "bare_ms": [], "missed": 0,
                               "rounds_e2e_p50": [], "rounds_bare_p50": []}
        try:
            if not parent.poll(60):
                raise RuntimeError("simulator did not start")
            ports = parent.recv()
            conns = [c.model_copy(update={"port": ports[c.id]}) for c in cfg.connections]
            cfg = cfg.model_copy(update={"connections": conns})
            for _ in range(rounds):
                g = asyncio.run(_gateway_round(cfg, parent, trips, poll_s))
                b = asyncio.run(_bare_round(ports["ep"], trips * 5))
                res["e2e_ms"] += g["e2e_ms"]
                res["inproc_ms"] += g["inproc_ms"]
                res["missed"] += g["missed"]
                res["bare_ms"] += b
                res["rounds_e2e_p50"].append(statistics.median(g["e2e_ms"] or [float("nan")]))
                res["rounds_bare_p50"].append(statistics.median(b))
        finally:
            parent.send(("stop",))
            sim.join(15)
            if sim.is_alive():
                sim.kill()
    return res


def report(res: dict[str, Any], poll_s: float) -> list[str]:
    e2e, bare, inproc = res["e2e_ms"], res["bare_ms"], res["inproc_ms"]
    lines = [f"protection end to end (value changes at the simulated meter -> zero command "
             f"arrives at the simulated charger), poll period {poll_s * 1000:.0f} ms, "
             f"rule delay 0:",
             f"{'':44}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}",
             f"{'gateway end to end':44}{len(e2e):6d}{_pct(e2e, 0.5):10.1f}"
             f"{_pct(e2e, 0.99):10.1f}",
             f"{'bare pymodbus read + write (the floor)':44}{len(bare):6d}"
             f"{_pct(bare, 0.5):10.2f}{_pct(bare, 0.99):10.2f}",
             f"{'in-process, sample -> command issued':44}{len(inproc):6d}"
             f"{_pct(inproc, 0.5):10.3f}{_pct(inproc, 0.99):10.3f}"]
    rng = res["rounds_e2e_p50"]
    lines.append(f"per-round p50 end to end: {min(rng):.1f}-{max(rng):.1f} ms; "
                 f"bare {min(res['rounds_bare_p50']):.2f}-{max(res['rounds_bare_p50']):.2f} ms;"
                 f" expected ~ poll/2 + round trip = {poll_s * 500 + _pct(bare, 0.5):.1f} ms")
    if res["missed"]:
        lines.append(f"MISSED: {res['missed']} over-currents never reached the charger")
    return lines
