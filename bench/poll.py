"""Poll throughput: the AutoGrid poller against a bare pymodbus loop, same simulators, same run.

    python bench/poll.py [--devices 200] [--per-endpoint 1] [--seconds 10]

The simulated site (N devices of every shipped template, round robin) runs in its own
process. Then, one after the other, each in a fresh process:
  baseline  bare pymodbus asyncio clients, one per endpoint, each looping over its
            devices and issuing exactly the read requests the gateway plans for them;
  gateway   the AutoGrid ModbusDriver + Poller + SiteState + historian (SQLite), every
            device polled as fast as its endpoint allows.
Printed: device reads/s for both and their ratio (target >= 0.85), client CPU seconds per
1000 device reads, and peak RSS of each client process. Bounded: every phase stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.template import load_template, template_names
from gateway.config.models import SiteConfig


def modbus_templates() -> list[str]:
    return [n for n in template_names() if load_template(n).protocol == "modbus"]


def site_config(n_devices: int, per_endpoint: int) -> SiteConfig:
    names = modbus_templates()
    conns, devices = [], []
    for i in range(n_devices):
        ep = i // per_endpoint
        if i % per_endpoint == 0:
            conns.append({"id": f"ep{ep}", "type": "modbus_tcp", "host": "127.0.0.1",
                          "port": 1, "timeout_s": 2.0})
        tpl = names[i % len(names)]
        devices.append({"id": f"dev{i}", "nature": str(load_template(tpl).nature),
                        "template": tpl, "connection": f"ep{ep}",
                        "unit_id": 1 + i % per_endpoint, "poll_interval_s": 1.0})
    return SiteConfig.model_validate({
        "site": {"name": "bench", "latitude": 48.1, "longitude": 11.6},
        "gateways": [{"id": "gw1"}], "connections": conns, "devices": devices,
        "historian": {"enabled": False}})


def with_ports(cfg: SiteConfig, ports: dict[str, int]) -> SiteConfig:
    conns = [c.model_copy(update={"port": ports[c.id]}) for c in cfg.connections]
    return cfg.model_copy(update={"connections": conns})


# -- simulator process -------------------------------------------------------------------

def _sim_main(cfg_json: str, pipe: Connection) -> None:
    from sim_devices.runner import SimRunner

    _quiet_pymodbus()
    async def main() -> None:
        cfg = SiteConfig.model_validate_json(cfg_json)
        runner = SimRunner(cfg, port_overrides={c.id: 0 for c in cfg.connections})
        ports = await runner.start()
        pipe.send(ports)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(pipe.fileno(), stop.set)
        try:
            await asyncio.wait_for(stop.wait(), 600)
        finally:
            await runner.stop()

    asyncio.run(main())


# -- client phases (each in a fresh process) ---------------------------------------------

def _usage() -> tuple[float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss


async def _baseline(cfg: SiteConfig, seconds: float) -> int:
    from pymodbus.client import AsyncModbusTcpClient

    from drivers.modbus.driver import ModbusDriver

    # The same request plan the gateway makes, taken from its planner.
    planner = ModbusDriver()
    plans: dict[str, list[tuple[int, list[tuple[str, int, int]]]]] = {}
    for dev in cfg.devices:
        io = planner.attach(dev, load_template(dev.template), cfg.connection(dev.connection))
        plans.setdefault(dev.connection, []).append(
            (dev.unit_id, [(str(b.function), b.address, b.count) for b in io.blocks]))
    await planner.close()

    count = 0
    stop_at = time.perf_counter() + seconds

    async def endpoint(conn_id: str) -> None:
        nonlocal count
        conn = cfg.connection(conn_id)
        client = AsyncModbusTcpClient(conn.host, port=conn.port, timeout=2.0, retries=0)  # type: ignore[union-attr,arg-type]
        await client.connect()
        calls = {"holding": client.read_holding_registers, "input": client.read_input_registers,
                 "coil": client.read_coils, "discrete": client.read_discrete_inputs}
        try:
            while time.perf_counter() < stop_at:
                for unit, blocks in plans[conn_id]:
                    for fn, address, n in blocks:
                        rr = await calls[fn](address, count=n, device_id=unit)
                        if rr.isError():
                            raise RuntimeError(f"{conn_id} unit {unit}: {rr}")
                    count += 1
        finally:
            client.close()

    await asyncio.gather(*(endpoint(c) for c in plans))
    return count


async def _gateway(cfg: SiteConfig, seconds: float, db: Path | None) -> int:
    from drivers.modbus.driver import ModbusDriver
    from gateway.config.models import Historian as HistorianConfig
    from gateway.historian import Historian
    from gateway.poller import Poller
    from gateway.state import DeviceState, SiteState

    state = SiteState()
    historian = None
    if db is not None:
        historian = Historian(HistorianConfig(path=db, flush_interval_s=1.0))
        await historian.start()
        state.on_change(historian.record)
    driver = ModbusDriver()
    poller = Poller(state)
    for dev in cfg.devices:
        io = driver.attach(dev, load_template(dev.template), cfg.connection(dev.connection))
        state.add_device(DeviceState(dev.id, dev.nature, max_age_s=5.0, endpoint=io.endpoint))
        poller.add(io, 0.0)  # as fast as the endpoint allows
    await asyncio.sleep(seconds)
    await poller.stop()
    await driver.close()
    if historian is not None:
        await historian.stop()
    good = sum(d.health.polls - d.health.errors for d in state.devices.values())
    errors = sum(d.health.errors for d in state.devices.values())
    if errors:
        kinds: dict[str, int] = {}
        for d in state.devices.values():
            if d.health.last_error:
                key = d.health.last_error.split(" reading")[0][:80]
                kinds[key] = kinds.get(key, 0) + 1
        print(f"gateway: {errors} failed polls; last errors: {kinds}", file=sys.stderr)
    return good


def _quiet_pymodbus() -> None:
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # lost links at phase end


def _phase_main(kind: str, cfg_json: str, seconds: float, pipe: Connection) -> None:
    _quiet_pymodbus()
    cfg = SiteConfig.model_validate_json(cfg_json)
    cpu0, _ = _usage()
    t0 = time.perf_counter()
    if kind == "baseline":
        n = asyncio.run(_baseline(cfg, seconds))
    elif kind == "gateway":
        n = asyncio.run(_gateway(cfg, seconds, None))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            n = asyncio.run(_gateway(cfg, seconds, Path(tmp) / "bench.sqlite"))
    elapsed = time.perf_counter() - t0
    cpu1, rss_kb = _usage()
    pipe.send({"reads": n, "seconds": elapsed, "cpu_s": cpu1 - cpu0, "rss_mb": rss_kb / 1024})


def run_phase(kind: str, cfg: SiteConfig, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_phase_main, args=(kind, cfg.model_dump_json(), seconds, child))
    p.start()
    if not parent.poll(seconds + 60):
        p.kill()
        raise RuntimeError(f"{kind} phase did not finish")
    result: dict[str, Any] = parent.recv()
    p.join(10)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--per-endpoint", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()

    cfg = site_config(args.devices, args.per_endpoint)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sim = ctx.Process(target=_sim_main, args=(cfg.model_dump_json(), child), daemon=True)
    sim.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("simulator did not start")
        live = with_ports(cfg, parent.recv())
        print(f"{args.devices} simulated devices ({len(modbus_templates())} Modbus templates) on "
              f"{len(live.connections)} endpoints; {args.seconds:.0f} s per phase; "
              f"{os.cpu_count()} CPUs")
        base = run_phase("baseline", live, args.seconds)
        gw = run_phase("gateway", live, args.seconds)
        gwh = run_phase("gateway+historian", live, args.seconds)
    finally:
        parent.send("stop")
        sim.join(30)
        if sim.is_alive():
            sim.kill()

    rows = []
    for name, r in (("bare pymodbus", base), ("autogrid poller", gw),
                    ("+ historian", gwh)):
        rate = r["reads"] / r["seconds"]
        cpu_per_1000 = r["cpu_s"] / max(r["reads"], 1) * 1000
        rows.append((name, rate, cpu_per_1000, r["rss_mb"]))
        r["reads_per_s"] = rate
        r["cpu_s_per_1000"] = cpu_per_1000
    print(f"{'':<18}{'reads/s':>10}{'CPU s/1000 reads':>18}{'peak RSS MB':>13}")
    for name, rate, cpu, rss in rows:
        print(f"{name:<18}{rate:>10.0f}{cpu:>18.3f}{rss:>13.1f}")
    ratio = rows[1][1] / rows[0][1] if rows[0][1] else 0.0
    ratio_h = rows[2][1] / rows[0][1] if rows[0][1] else 0.0
    print(f"ratio autogrid/bare = {ratio:.2f} (target >= 0.85); "
          f"with every changed value written to the historian = {ratio_h:.2f}")
    if args.json:
        print(json.dumps({"baseline": base, "gateway": gw, "gateway_historian": gwh,
                          "ratio": ratio, "ratio_historian": ratio_h}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
