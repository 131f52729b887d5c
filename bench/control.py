"""Control timing: protection latency end to end (simulated device to simulated device)
against the bare protocol round trip, and the site controller's cycle with 200 devices
polling in the same process against the bare cycle (no polling), each in the same run.

    python bench/control.py [--devices 200] [--seconds 10] [--cycle-s 0.1] [--poll-s 0.5]
                            [--trip-poll-s 0.1] [--rounds 3] [--trips 30]

Protection end to end: see bench/protection_e2e.py (the headline figure).

The simulated site (meters, batteries, EV chargers with cars, loads, PV, breakers over
Modbus TCP, 10 devices per endpoint) runs in its own process. In this process:
  loaded   the daemon (drivers, poller, SiteState, control component) polls every device
           every poll_s; the controller runs every cycle_s and writes through the applier;
           a protection rule on the PCC meter's voltage (threshold = its mean, reset at
           once) trips a battery on about every second sample.
  bare     the poller stopped, the same controller cycle on the same (frozen) state at
           the same period, with nothing else on the event loop.
Printed: cycle compute time and start jitter (lateness) p50/p99 for both and the ratio,
in-process protection sample-to-trip-command latency p50/p99, and the cycles the loop
skipped because a cycle overran its slot. Bounded:
each phase stops by itself; the simulator process is ended at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# The repo root instead of bench/ (whose can.py would shadow python-can).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from gateway.config.models import SiteConfig  # noqa: E402

KINDS = [("meter", "meter_3ph"), ("bess", "generic_bess"), ("evse", "generic_evse"),
         ("load", "generic_load"), ("pv_inverter", "sunspec_inverter"),
         ("evse", "generic_evse"), ("load", "generic_load"), ("breaker", "generic_breaker")]
PER_ENDPOINT = 10


def site_config(n: int, cycle_s: float, poll_s: float, socket: str) -> SiteConfig:
    conns, devices, sim = [], [], {}
    for i in range(n):
        ep = i // PER_ENDPOINT
        if i % PER_ENDPOINT == 0:
            conns.append({"id": f"ep{ep}", "type": "modbus_tcp", "host": "127.0.0.1",
                          "port": 1, "timeout_s": 2.0})
        nature, tpl = KINDS[i % len(KINDS)]
        dev: dict[str, Any] = {"id": f"{nature}{i}", "nature": nature, "template": tpl,
                               "connection": f"ep{ep}", "unit_id": 1 + i % PER_ENDPOINT,
                               "poll_interval_s": poll_s}
        if i == 0:
            dev["role"] = "grid"
        elif nature == "meter":
            dev["role"] = "sub"
        ratings = {"bess": {"capacity_kwh": 50, "p_max_kw": 25},
                   "evse": {"p_max_kw": 11, "p_discharge_max_kw": 11},
                   "load": {"p_max_kw": 5}, "pv_inverter": {"kwp": 20, "p_max_kw": 20}}
        dev["ratings"] = ratings.get(nature, {})
        if nature == "load":
            dev["control"] = {"priority": ("critical", "essential", "deferrable")[i % 3]}
        if nature == "evse":
            sim[dev["id"]] = {"default_p_kw": 0, "v2g_capable": True, "sessions": [
                {"arrival": "00:00", "departure": "23:59", "energy_kwh": 30, "v2g": True}]}
        devices.append(dev)
    return SiteConfig.model_validate({
        "site": {"name": "bench", "latitude": 48.1, "longitude": 11.6,
                 "grid": {"import_limit_kw": 400, "export_limit_kw": 200}},
        "gateways": [{"id": "gw1", "api_socket": socket}],
        "connections": conns, "devices": devices, "historian": {"enabled": False},
        "control": {"cycle_s": cycle_s, "protection": {"reset_after_s": 0}},
        "simulation": {"seed": 1, "clock": {"start": "2025-06-21T12:00:00+02:00"},
                       "devices": sim}})


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _sim_main(cfg_json: str, pipe: Connection) -> None:
    from sim_devices.runner import SimRunner

    _quiet()

    async def main() -> None:
        cfg = SiteConfig.model_validate_json(cfg_json)
        runner = SimRunner(cfg, port_overrides={c.id: 0 for c in cfg.connections})
        pipe.send(await runner.start())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)
        try:
            await asyncio.wait_for(stop.wait(), 600)
        finally:
            await runner.stop()

    asyncio.run(main())


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def run(cfg: SiteConfig, seconds: float) -> dict[str, Any]:
    from gateway.control.component import ControlComponent
    from gateway.control.protection import Rule
    from gateway.daemon import Daemon
    from gateway.model import Nature

    daemon = Daemon(cfg)
    await daemon.start()
    try:
        comp = next(c for c in daemon.components if isinstance(c, ControlComponent))
        await asyncio.sleep(3 * cfg.devices[0].poll_interval_s)  # every device read once
        # Protection load: every meter sample "offends" (v_v > 0) and zeroes a battery;
        # a listener behind protection re-arms the rule, so each sample trips again.
        bess = next(d.id for d in cfg.devices if d.nature is Nature.BESS)
        prot = comp.protection
        prot.rules[(Nature.METER, "v_v")] = [Rule("bench_trip", Nature.METER, "v_v", ">",
                                                  0.0, 0.0, "zero", severity="info",
                                                  target=bess)]

        def rearm(device_id: str, changed: dict[str, Any]) -> None:
            prot.active.clear()
            prot.since.clear()
        daemon.state.on_change(rearm)
        comp.cycle_ms.clear()
        comp.lateness_ms.clear()
        comp.protection.latencies_ms.clear()
        polls0 = sum(d.health.polls for d in daemon.state.devices.values())
        skipped0 = comp.skipped_cycles
        cycles0 = comp.controller.cycles
        await asyncio.sleep(seconds)
        polls = sum(d.health.polls for d in daemon.state.devices.values()) - polls0
        loaded = {"cycle_ms": list(comp.cycle_ms), "late_ms": list(comp.lateness_ms),
                  "polls_s": polls / seconds, "writes": comp.applier.writes,
                  "cycles": comp.controller.cycles - cycles0,
                  "skipped": comp.skipped_cycles - skipped0}
        trips = list(comp.protection.latencies_ms)
        await daemon.poller.stop()  # bare: the same cycle, nothing else on the loop
        frozen = time.time()
        ctl = comp.controller
        period = cfg.control.cycle_s if cfg.control else 1.0
        loop = asyncio.get_running_loop()
        cyc: list[float] = []
        late: list[float] = []
        due = loop.time()
        end = due + seconds
        while loop.time() < end:
            late.append(max(0.0, loop.time() - due) * 1000.0)
            t0 = time.perf_counter()
            ctl.cycle(daemon.state, ctl.clock(), frozen)  # result unused: timing only
            cyc.append((time.perf_counter() - t0) * 1000.0)
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))
        return {"loaded": loaded, "bare": {"cycle_ms": cyc, "late_ms": late}, "trips": trips,
                "devices": len(daemon.state.devices)}
    finally:
        await daemon.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cycle-s", type=float, default=0.1)
    ap.add_argument("--poll-s", type=float, default=0.5)
    ap.add_argument("--trip-poll-s", type=float, default=0.1,
                    help="poll period of the end-to-end protection site")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trips", type=int, default=30, help="over-currents per round")
    a = ap.parse_args()
    _quiet()
    from bench.protection_e2e import measure, report

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    e2e = measure(a.trip_poll_s, a.rounds, a.trips)
    for line in report(e2e, a.trip_poll_s):
        print(line)
    print()
    tmp = tempfile.mkdtemp(prefix="autogrid-bench-control-")
    cfg = site_config(a.devices, a.cycle_s, a.poll_s, str(Path(tmp) / "api.sock"))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sim = ctx.Process(target=_sim_main, args=(cfg.model_dump_json(), child), daemon=True)
    sim.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("simulator did not start")
        ports = parent.recv()
        conns = [c.model_copy(update={"port": ports[c.id]}) for c in cfg.connections]
        res = asyncio.run(run(cfg.model_copy(update={"connections": conns}), a.seconds))
    finally:
        parent.send("stop")
        sim.join(15)
        if sim.is_alive():
            sim.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    ld, br = res["loaded"], res["bare"]
    print(f"{res['devices']} devices, {ld['polls_s']:.0f} polls/s, cycle {a.cycle_s * 1000:.0f}"
          f" ms, {a.seconds:.0f} s per phase, {ld['writes']} setpoint writes, "
          f"{ld['cycles']} cycles, {ld['skipped']} skipped (overran their slot)")
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in (("cycle time, bare", br["cycle_ms"]), ("cycle time, 200 polling",
                                                           ld["cycle_ms"]),
                    ("start jitter, bare", br["late_ms"]),
                    ("start jitter, 200 polling", ld["late_ms"])):
        print(f"{name:28}{pct(r, 0.5):10.2f}{pct(r, 0.99):10.2f}")
    for what in ("cycle_ms", "late_ms"):
        b50, l50 = pct(br[what], 0.5), pct(ld[what], 0.5)
        b99, l99 = pct(br[what], 0.99), pct(ld[what], 0.99)
        print(f"ratio polling/bare {what}: p50 {l50 / max(b50, 1e-3):.2f}x, "
              f"p99 {l99 / max(b99, 1e-3):.2f}x")
    t = res["trips"]
    p99 = pct(t, 0.99)
    print(f"protection in-process under load: {len(t)} trips, sample-to-trip-command p50 "
          f"{pct(t, 0.5):.3f} ms, p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
