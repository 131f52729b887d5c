"""Poll throughput: the AutoGrid poller against a bare pymodbus client and a naive
one-request-per-point client, on the same servers, interleaved over several rounds.

    python bench/poll.py [--devices 200] [--per-endpoint 10] [--seconds 10] [--rounds 3]
                         [--window 8] [--clients autogrid,bare,...] [--no-pin] [--json]
    python bench/poll.py --inline KIND --seconds S   # one client in this process (callgrind)

Servers: cheap Modbus TCP servers (bench/servers.py) spread over processes of at most 250
devices each; their CPU is measured in every phase, and a phase in which one of them used
more than half a core is marked server-bound (the client was not the bottleneck).
Clients, each in a fresh process, each polling every device as fast as it can:
  autogrid      ModbusDriver + Poller + SiteState as configured by default: the lean link,
                one request at a time per endpoint
  autogrid-pymodbus  the same with `client: pymodbus` (the pymodbus client)
  autogrid-pipe the lean link with max_in_flight = --window (Modbus TCP transaction ids)
  bare          baseline 1: one pymodbus asyncio client per endpoint making exactly the
                requests the gateway plans (the same blocks), nothing else
  socket        baseline 2: a naive plain asyncio socket per endpoint, the same blocks one
                request at a time, frames packed and registers unpacked with struct, no
                validation at all (the floor of a Python client)
  naive         one pymodbus request per point, the scale factor read again for every
                point that has one, as common integrations do
The phases run in a rotated order in each round, so a noisy neighbour hits all of them.
Printed per client: device reads/s and points/s (median and range over the rounds), client
CPU seconds per 1000 device reads and the share of it spent in the kernel, peak RSS of the
client process. The CPU-per-read ratio is also given for user CPU alone: on a shared VM
the kernel side of loopback TCP (send() does the receiver's TCP work and wakes it) swings
by 3x for the same client from run to run with where the scheduler puts client and
servers, while user CPU is what the client's code decides. So by default the servers run
on the first CPU and every client on the last, and each phase has the same placement
(``--no-pin`` leaves placement to the scheduler).
Ratios against both baselines (bare pymodbus, naive socket) are computed per round and
refused for a round in which either side got less than half a core (starved by the
machine) or a server was saturated.

``--inline KIND`` runs one client for ``--seconds`` in this process (servers still in
their own processes) and prints its device reads: run it under ``valgrind
--tool=callgrind`` at two lengths and divide the difference of the instruction counts by
the difference of the reads, so start-up cancels out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.servers import CpuWatch, ServerFarm, modbus_templates  # noqa: E402
from drivers.template import ModbusTemplate, load_template  # noqa: E402
from gateway.config.models import SiteConfig  # noqa: E402

CLIENTS = ("autogrid", "autogrid-pymodbus", "autogrid-pipe", "bare", "socket", "naive")
BASELINES = ("bare", "socket")
STARVED_SHARE = 0.5  # a client phase with less CPU than this share of a core was starved
SERVER_LIMIT = 0.5  # a server process above this share of a core may be the bottleneck


def layout(n_devices: int, per_endpoint: int) -> list[list[tuple[int, str]]]:
    names = modbus_templates()
    endpoints: list[list[tuple[int, str]]] = []
    for i in range(n_devices):
        if i % per_endpoint == 0:
            endpoints.append([])
        endpoints[-1].append((1 + i % per_endpoint, names[i % len(names)]))
    return endpoints


def site_config(endpoints: list[list[tuple[int, str]]], ports: list[int],
                window: int, client: str = "lean") -> SiteConfig:
    conns, devices = [], []
    for e, (units, port) in enumerate(zip(endpoints, ports, strict=True)):
        conns.append({"id": f"ep{e}", "type": "modbus_tcp", "host": "127.0.0.1",
                      "port": port, "timeout_s": 5.0, "max_in_flight": window,
                      "client": client})
        for unit, tpl in units:
            devices.append({"id": f"dev{len(devices)}", "nature": str(load_template(tpl).nature),
                            "template": tpl, "connection": f"ep{e}", "unit_id": unit,
                            "poll_interval_s": 1.0})
    return SiteConfig.model_validate({
        "site": {"name": "bench", "latitude": 48.1, "longitude": 11.6},
        "gateways": [{"id": "gw1"}], "connections": conns, "devices": devices,
        "historian": {"enabled": False}})


# -- clients (each in a fresh process) ---------------------------------------------------

async def _autogrid(cfg: SiteConfig, seconds: float) -> tuple[int, int]:
    from drivers.modbus.driver import ModbusDriver
    from gateway.poller import Poller
    from gateway.state import DeviceState, SiteState

    state = SiteState()
    driver = ModbusDriver()
    poller = Poller(state)
    points = {}
    ios = []
    for dev in cfg.devices:
        io = driver.attach(dev, load_template(dev.template), cfg.connection(dev.connection))
        points[dev.id] = len(io.polled)
        state.add_device(DeviceState(dev.id, dev.nature, max_age_s=5.0, endpoint=io.endpoint))
        ios.append(io)
    for io in ios:
        poller.add(io, 0.0)  # as fast as the endpoint allows
    await asyncio.sleep(seconds)
    await poller.stop()
    await driver.close()
    good = {d: s.health.polls - s.health.errors for d, s in state.devices.items()}
    errors = sum(s.health.errors for s in state.devices.values())
    if errors:
        print(f"autogrid: {errors} failed polls, e.g. "
              f"{next(s.health.last_error for s in state.devices.values() if s.health.errors)}",
              file=sys.stderr)
    return sum(good.values()), sum(good[d] * points[d] for d in good)


def _plans(cfg: SiteConfig) -> dict[str, list[tuple[int, int, list[tuple[str, int, int]]]]]:
    """Per endpoint: (unit, points, the gateway's planned blocks) of each device."""
    from drivers.modbus.driver import ModbusDriver

    planner = ModbusDriver()
    plans: dict[str, list[tuple[int, int, list[tuple[str, int, int]]]]] = {}
    for dev in cfg.devices:
        io = planner.attach(dev, load_template(dev.template), cfg.connection(dev.connection))
        plans.setdefault(dev.connection, []).append(
            (dev.unit_id, len(io.polled),
             [(str(b.function), b.address, b.count) for b in io.blocks]))
    return plans


def _naive_plans(cfg: SiteConfig) -> dict[str, list[tuple[int, int, list[tuple[str, int, int]]]]]:
    """Per endpoint: one request per polled point, and its scale factor before it."""
    from drivers.modbus.driver import ModbusDriver

    planner = ModbusDriver()
    plans: dict[str, list[tuple[int, int, list[tuple[str, int, int]]]]] = {}
    for dev in cfg.devices:
        tpl = load_template(dev.template)
        assert isinstance(tpl, ModbusTemplate)
        io = planner.attach(dev, tpl, cfg.connection(dev.connection))
        reqs: list[tuple[str, int, int]] = []
        for name in io.polled:
            pt = tpl.points[name]
            if pt.scale_factor is not None:
                reqs.append(("holding", pt.scale_factor, 1))
            reqs.append((str(pt.function), pt.address, pt.width))
        plans.setdefault(dev.connection, []).append((dev.unit_id, len(io.polled), reqs))
    return plans


async def _pymodbus(cfg: SiteConfig, seconds: float, naive: bool) -> tuple[int, int]:
    from pymodbus.client import AsyncModbusTcpClient

    plans = _naive_plans(cfg) if naive else _plans(cfg)
    reads = points = 0
    stop_at = time.perf_counter() + seconds

    async def endpoint(conn_id: str) -> None:
        nonlocal reads, points
        conn = cfg.connection(conn_id)
        client = AsyncModbusTcpClient(conn.host, port=conn.port, timeout=5.0, retries=0)  # type: ignore[union-attr,arg-type]
        await client.connect()
        calls = {"holding": client.read_holding_registers, "input": client.read_input_registers,
                 "coil": client.read_coils, "discrete": client.read_discrete_inputs}
        try:
            while time.perf_counter() < stop_at:
                for unit, n_points, blocks in plans[conn_id]:
                    for fn, address, n in blocks:
                        rr = await calls[fn](address, count=n, device_id=unit)
                        if rr.isError():
                            raise RuntimeError(f"{conn_id} unit {unit}: {rr}")
                    reads += 1
                    points += n_points
        finally:
            client.close()

    await asyncio.gather(*(endpoint(c) for c in plans))
    return reads, points


async def _socket(cfg: SiteConfig, seconds: float) -> tuple[int, int]:
    """The naive floor: a plain asyncio stream per endpoint, one request at a time, the
    gateway's blocks, struct packing and unpacking, no validation of any kind."""
    import struct

    plans = _plans(cfg)
    fcs = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
    reads = points = 0
    stop_at = time.perf_counter() + seconds
    mbap = struct.Struct(">HHHBBHH")

    async def endpoint(conn_id: str) -> None:
        nonlocal reads, points
        conn = cfg.connection(conn_id)
        reader, writer = await asyncio.open_connection(conn.host, conn.port)  # type: ignore[union-attr]
        reqs = [(unit, n_points, [(fcs[fn], a, n) for fn, a, n in blocks])
                for unit, n_points, blocks in plans[conn_id]]
        tid = 0
        try:
            while time.perf_counter() < stop_at:
                for unit, n_points, blocks in reqs:
                    for fc, address, n in blocks:
                        tid = (tid + 1) & 0xFFFF
                        writer.write(mbap.pack(tid, 0, 6, unit, fc, address, n))
                        head = await reader.readexactly(6)
                        body = await reader.readexactly(int.from_bytes(head[4:6], "big"))
                        if fc > 2:
                            struct.unpack_from(f">{n}H", body, 3)
                    reads += 1
                    points += n_points
        finally:
            writer.close()

    await asyncio.gather(*(endpoint(c) for c in plans))
    return reads, points


def _run_client(kind: str, cfg: SiteConfig, seconds: float) -> tuple[int, int]:
    if kind.startswith("autogrid"):
        return asyncio.run(_autogrid(cfg, seconds))
    if kind == "socket":
        return asyncio.run(_socket(cfg, seconds))
    return asyncio.run(_pymodbus(cfg, seconds, naive=kind == "naive"))


def _client_main(kind: str, cfg_json: str, seconds: float, pipe: Connection,
                 cpu: int | None = None) -> None:
    import logging

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # links closed at phase end
    cfg = SiteConfig.model_validate_json(cfg_json)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    reads, points = _run_client(kind, cfg, seconds)
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    pipe.send({"reads": reads, "points": points, "seconds": elapsed, "cpu_s": user + system,
               "user_s": user, "sys_s": system, "rss_mb": ru1.ru_maxrss / 1024})


def run_phase(kind: str, cfg: SiteConfig, seconds: float, watch: CpuWatch,
              cpu: int | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_client_main,
                    args=(kind, cfg.model_dump_json(), seconds, child, cpu))
    p.start()
    watch.start()
    if not parent.poll(seconds + 120):
        p.kill()
        raise RuntimeError(f"{kind} phase did not finish")
    result: dict[str, Any] = parent.recv()
    result["server_share"] = max(watch.shares())
    p.join(10)
    result["client_share"] = result["cpu_s"] / result["seconds"]
    result["reads_per_s"] = result["reads"] / result["seconds"]
    result["points_per_s"] = result["points"] / result["seconds"]
    result["cpu_s_per_1000"] = result["cpu_s"] / max(result["reads"], 1) * 1000
    result["sys_share"] = result["sys_s"] / max(result["cpu_s"], 1e-9)
    return result


def _why_invalid(r: dict[str, Any]) -> str | None:
    if r["server_share"] > SERVER_LIMIT:
        return f"a server used {100 * r['server_share']:.0f} % of a core"
    if r["client_share"] < STARVED_SHARE:
        return f"the client got only {100 * r['client_share']:.0f} % of a core (starved)"
    return None


def _ratios(rs: list[dict[str, Any]], bs: list[dict[str, Any]]
            ) -> tuple[dict[str, list[float]], list[str]]:
    """Per-round ratios of ``rs`` to the baseline ``bs`` (same round), refusing a round in
    which either side was starved or a server saturated."""
    got: dict[str, list[float]] = {"reads": [], "cpu": [], "user": [], "points": []}
    refused = []
    for r, b in zip(rs, bs, strict=True):
        why = _why_invalid(b) or _why_invalid(r)
        if why:
            refused.append(f"round {r['round'] + 1}: {why}")
            continue
        got["reads"].append(r["reads_per_s"] / b["reads_per_s"])
        got["points"].append(r["points_per_s"] / b["points_per_s"])
        got["cpu"].append(r["cpu_s_per_1000"] / b["cpu_s_per_1000"])
        got["user"].append((r["user_s"] / max(r["reads"], 1))
                           / (b["user_s"] / max(b["reads"], 1)))
    return got, refused


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def _configs(endpoints: list[list[tuple[int, str]]], ports: list[int],
             window: int) -> dict[str, SiteConfig]:
    cfgs = {"autogrid-pipe": site_config(endpoints, ports, window),
            "autogrid-pymodbus": site_config(endpoints, ports, 1, client="pymodbus")}
    cfgs.update({k: site_config(endpoints, ports, 1) for k in CLIENTS if k not in cfgs})
    return cfgs


def inline(args: argparse.Namespace) -> int:
    """One client in this process; the servers in theirs (not traced by callgrind)."""
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    endpoints = layout(args.devices, args.per_endpoint)
    farm = ServerFarm(endpoints)
    try:
        ports = farm.start()
        cfg = _configs(endpoints, ports, args.window)[args.inline]
        reads, points = _run_client(args.inline, cfg, args.seconds)
    finally:
        farm.stop()
    print(json.dumps({"client": args.inline, "seconds": args.seconds, "reads": reads,
                      "points": points}))
    return 0 if reads else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--per-endpoint", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=8, help="max_in_flight of autogrid-pipe")
    ap.add_argument("--clients", default=",".join(CLIENTS),
                    help="comma-separated subset of the clients to run (default: all)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="let the scheduler place servers and clients (by default the "
                    "servers run on the first CPU and every client on the last one)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--inline", choices=CLIENTS, help="run one client in this process "
                    "for --seconds and print its reads (for callgrind)")
    args = ap.parse_args()
    if args.inline:
        return inline(args)
    if args.rounds < 3:
        print("note: fewer than 3 rounds give no meaningful range", file=sys.stderr)

    clients = tuple(k for k in CLIENTS if k in args.clients.split(","))
    unknown = set(args.clients.split(",")) - set(CLIENTS)
    if unknown or not clients:
        print(f"--clients: unknown {', '.join(sorted(unknown)) or 'empty list'} "
              f"(known: {', '.join(CLIENTS)})", file=sys.stderr)
        return 2
    endpoints = layout(args.devices, args.per_endpoint)
    farm = ServerFarm(endpoints)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in clients}
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu = cpus[-1] if args.pin and len(cpus) > 1 else None
    try:
        if client_cpu is not None:
            os.sched_setaffinity(0, {cpus[0]})  # the server processes inherit it
        ports = farm.start()
        os.sched_setaffinity(0, cpus)
        cfgs = _configs(endpoints, ports, args.window)
        placement = (f"servers on CPU {cpus[0]}, clients on CPU {client_cpu}"
                     if client_cpu is not None else "unpinned")
        print(f"{args.devices} devices ({len(modbus_templates())} Modbus templates) on "
              f"{len(endpoints)} endpoints, {len(farm.procs)} server processes; "
              f"{args.rounds} rounds x {len(clients)} clients x {args.seconds:g} s; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
              f"{placement}; "
              f"{platform.node()}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
        watch = CpuWatch(farm)
        for rnd in range(args.rounds):
            order = clients[rnd % len(clients):] + clients[:rnd % len(clients)]
            for kind in order:
                r = run_phase(kind, cfgs[kind], args.seconds, watch, client_cpu)
                r["round"] = rnd
                results[kind].append(r)
                flag = _why_invalid(r)
                print(f"  round {rnd + 1} {kind:<18}{r['reads_per_s']:>9.0f} reads/s "
                      f"{r['cpu_s_per_1000']:>7.3f} CPU s/1000 reads "
                      f"({100 * r['sys_share']:.0f} % system)  client "
                      f"{100 * r['client_share']:>3.0f} % of a core, busiest server "
                      f"{100 * r['server_share']:>3.0f} %{'  [' + flag + ']' if flag else ''}")
    finally:
        farm.stop()

    print(f"\n{'client':<19}{'reads/s':>20}{'points/s':>26}{'CPU s/1000 reads':>26}"
          f"{'RSS MB':>8}")
    for kind in clients:
        rs = results[kind]
        print(f"{kind:<19}{_spread([r['reads_per_s'] for r in rs], '.0f'):>20}"
              f"{_spread([r['points_per_s'] for r in rs], '.0f'):>26}"
              f"{_spread([r['cpu_s_per_1000'] for r in rs], '.3f'):>26}"
              f"{max(r['rss_mb'] for r in rs):>8.0f}")
    ratios: dict[str, dict[str, dict[str, list[float]]]] = {}
    for base in (b for b in BASELINES if b in clients):
        print(f"\nratios against {base}, per round (a round is refused when either side "
              f"was starved or a server saturated):")
        ratios[base] = {}
        for kind in clients:
            if kind == base:
                continue
            got, refused = _ratios(results[kind], results[base])
            ratios[base][kind] = got
            if got["reads"]:
                print(f"  {kind:<18} reads/s x{_spread(got['reads'], '.2f')}, points/s "
                      f"x{_spread(got['points'], '.2f')}, CPU per read "
                      f"x{_spread(got['cpu'], '.2f')} (user CPU alone "
                      f"x{_spread(got['user'], '.2f')})  ({len(got['reads'])} valid rounds)")
            else:
                print(f"  {kind:<18} no ratio: every round was refused")
            for line in refused:
                print(f"  {'':<18} refused {line}")
    if args.json:
        print(json.dumps({"results": results, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
