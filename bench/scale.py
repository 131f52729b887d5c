"""Scale: the real `autogrid run` daemon at 200/500/1000/2000 devices polled at 1 Hz.

    python bench/scale.py [--sizes 200,500,1000,2000] [--seconds 60] [--warmup 10]
                          [--window 1] [--client lean|pymodbus] [--slot S] [--control]
                          [--analytics] [--no-pin] [--json]

For each size: cheap Modbus TCP servers (bench/servers.py, 10 devices per endpoint, at
most 250 devices per server process, each checked to stay below half a core) and the
daemon as a subprocess (`python -m gateway.cli run`) with the historian on, the site
controller with --control and analytics with --analytics, its own temp dir and API socket
(the servers store writes, so control's read-backs confirm as on a device). After
a warm-up, over --seconds (>= 60 for the figures that count): daemon CPU % of one core
and RSS (from /proc), achieved poll rate per device, skipped slots, and from the daemon's
own poller statistics the read latency and the poll start lateness p50/p99. Printed last:
CPU per device at each size against the smallest (flat = within 1.2x), refused when a
size was starved (achieved rate below 95 % while the machine had more runnable work than
cores) or a server was saturated.

Placement, as in bench/poll.py: by default the servers (and this script) run on the first
CPU and the daemon alone on the last, as a gateway's devices sit on other machines; with
``--no-pin`` the scheduler places them, and the daemon's CPU then includes the cost of
sharing its CPUs with the simulated devices (migrations, cross-CPU wake-ups), which swings
run to run on a shared VM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.servers import CpuWatch, ServerFarm, cpu_seconds  # noqa: E402
from drivers.template import load_template  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PER_ENDPOINT = 10
KINDS = [("meter", "meter_3ph"), ("bess", "generic_bess"), ("evse", "generic_evse"),
         ("load", "generic_load"), ("pv_inverter", "sunspec_inverter"),
         ("evse", "generic_evse"), ("load", "generic_load"), ("breaker", "generic_breaker")]
RATINGS = {"bess": {"capacity_kwh": 50, "p_max_kw": 25},
           "evse": {"p_max_kw": 11, "p_discharge_max_kw": 11},
           "load": {"p_max_kw": 5}, "pv_inverter": {"kwp": 20, "p_max_kw": 20}}


def layout(n: int) -> list[list[tuple[int, str]]]:
    endpoints: list[list[tuple[int, str]]] = []
    for i in range(n):
        if i % PER_ENDPOINT == 0:
            endpoints.append([])
        endpoints[-1].append((1 + i % PER_ENDPOINT, KINDS[i % len(KINDS)][1]))
    return endpoints


def site_yaml(n: int, ports: list[int], tmp: Path, window: int, control: bool,
              analytics: bool, client: str = "lean",
              slot_s: float | None = None) -> dict[str, Any]:
    conns, devices = [], []
    for e, port in enumerate(ports):
        conns.append({"id": f"ep{e}", "type": "modbus_tcp", "host": "127.0.0.1", "port": port,
                      "timeout_s": 2.0, "max_in_flight": window, "client": client})
    for i in range(n):
        nature, tpl = KINDS[i % len(KINDS)]
        assert str(load_template(tpl).nature) == nature
        dev: dict[str, Any] = {"id": f"{nature}{i}", "nature": nature, "template": tpl,
                               "connection": f"ep{i // PER_ENDPOINT}",
                               "unit_id": 1 + i % PER_ENDPOINT, "poll_interval_s": 1.0,
                               "ratings": dict(RATINGS.get(nature, {}))}  # no YAML aliases
        if i == 0:
            dev["role"] = "grid"
        elif nature == "meter":
            dev["role"] = "sub"
        devices.append(dev)
    cfg: dict[str, Any] = {
        "site": {"name": "scale", "latitude": 48.1, "longitude": 11.6,
                 "grid": {"import_limit_kw": 100000, "export_limit_kw": 100000}},
        "gateways": [{"id": "gw1", "api_socket": str(tmp / "api.sock"),
                      **({} if slot_s is None else {"poll_slot_s": slot_s})}],
        "connections": conns, "devices": devices,
        "historian": {"path": str(tmp / "history.sqlite"), "flush_interval_s": 2.0},
        "analytics": {"enabled": analytics},
        "logging": {"level": "warning"}}
    if control:
        cfg["control"] = {"cycle_s": 1.0}
    return cfg


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def api(sock: Path, cmd: str) -> Any:
    from gateway.apiclient import ApiClient

    async def call() -> Any:
        async with ApiClient(sock) as client:
            return await client.request(cmd)

    return asyncio.run(call())


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    farm = ServerFarm(layout(n))
    with tempfile.TemporaryDirectory(prefix="autogrid-scale-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            ports = farm.start()
            cfg = tmp / "site.yaml"
            cfg.write_text(yaml.safe_dump(site_yaml(n, ports, tmp, args.window,
                                                    args.control, args.analytics,
                                                    args.client, args.slot)))
            cpu = args.daemon_cpu
            daemon = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c",
                                       str(cfg)], cwd=tmp, stdout=subprocess.DEVNULL,
                                      preexec_fn=None if cpu is None else
                                      (lambda: os.sched_setaffinity(0, {cpu})),
                                      stderr=open(tmp / "daemon.log", "w"),  # noqa: SIM115
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
            print(f"  ({n} devices: daemon pid {daemon.pid}, for a profiler)", file=sys.stderr,
                  flush=True)
            try:
                return _measure(n, daemon, tmp, farm, args)
            finally:
                daemon.terminate()
                try:
                    daemon.wait(30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
        finally:
            farm.stop()


def _measure(n: int, daemon: subprocess.Popen[bytes], tmp: Path, farm: ServerFarm,
             args: argparse.Namespace) -> dict[str, Any]:
    sock = tmp / "api.sock"
    deadline = time.monotonic() + 120
    while True:
        if daemon.poll() is not None:
            raise RuntimeError(f"daemon exited: {(tmp / 'daemon.log').read_text()[-2000:]}")
        try:
            api(sock, "ping")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not answer within 120 s") from None
            time.sleep(0.5)
    time.sleep(args.warmup)
    watch = CpuWatch(farm)
    watch.start()
    s0, c0, t0 = api(sock, "stats")["poller"], cpu_seconds(daemon.pid), time.perf_counter()
    peak = 0.0
    load = []
    end = t0 + args.seconds
    while time.perf_counter() < end:
        peak = max(peak, rss_mb(daemon.pid))
        load.append(os.getloadavg()[0])
        time.sleep(min(1.0, max(0.0, end - time.perf_counter())))
    s1, c1, t1 = api(sock, "stats")["poller"], cpu_seconds(daemon.pid), time.perf_counter()
    wall = t1 - t0
    return {"devices": n, "seconds": wall, "cpu_pct": 100 * (c1 - c0) / wall,
            "rss_mb": rss_mb(daemon.pid), "rss_peak_mb": peak,
            "rate_hz": (s1["polls"] - s0["polls"]) / wall / n,
            "skipped": s1["skipped"] - s0["skipped"],
            "read_ms_p50": s1["read_ms_p50"], "read_ms_p99": s1["read_ms_p99"],
            "late_ms_p50": s1["late_ms_p50"], "late_ms_p99": s1["late_ms_p99"],
            "server_share": max(watch.shares()), "load": max(load) if load else 0.0}


def _starved(r: dict[str, Any]) -> str | None:
    cores = os.cpu_count() or 1
    if r["server_share"] > 0.5:
        return f"a server used {100 * r['server_share']:.0f} % of a core"
    if r["rate_hz"] < 0.95 and r["load"] > cores:
        return (f"{r['rate_hz']:.2f} Hz achieved with load {r['load']:.1f} on {cores} cores "
                f"(starved)")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sizes", default="200,500,1000,2000")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=1, help="max_in_flight per endpoint")
    ap.add_argument("--client", choices=("lean", "pymodbus"), default="lean",
                    help="the Modbus TCP client of every connection")
    ap.add_argument("--slot", type=float, default=None,
                    help="the gateway's poll_slot_s (default: the daemon's own default)")
    ap.add_argument("--analytics", action="store_true", help="analytics component on")
    ap.add_argument("--control", action="store_true", help="site controller on")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="let the scheduler place the servers and the daemon (by default "
                    "the servers run on the first CPU and the daemon on the last one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    args.daemon_cpu = cpus[-1] if args.pin and len(cpus) > 1 else None
    if args.daemon_cpu is not None:
        os.sched_setaffinity(0, {cpus[0]})  # this script and the servers it starts
    placement = (f"servers on CPU {cpus[0]}, daemon on CPU {args.daemon_cpu}"
                 if args.daemon_cpu is not None else "unpinned")
    if args.seconds < 60:
        print(f"note: {args.seconds:g} s per size is a smoke run; the figures need >= 60 s",
              file=sys.stderr)
    print(f"autogrid run at {sizes} devices, 1 Hz, historian on, control "
          f"{'on' if args.control else 'off'}, analytics {'on' if args.analytics else 'off'},"
          f" client {args.client}, max_in_flight {args.window}, poll_slot_s "
          f"{'default' if args.slot is None else f'{args.slot:g}'}; {args.seconds:g} s each after "
          f"{args.warmup:g} s "
          f"warm-up; {os.cpu_count()} CPUs, {placement}; {platform.node()}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'devices':>8}{'CPU %':>8}{'RSS MB':>8}{'rate Hz':>9}{'skipped':>9}"
          f"{'read p50/p99 ms':>18}{'late p50/p99 ms':>18}{'server %':>10}{'load':>6}")
    results = []
    for n in sizes:
        r = run_size(n, args)
        results.append(r)
        print(f"{n:>8}{r['cpu_pct']:>8.1f}{r['rss_mb']:>8.0f}{r['rate_hz']:>9.3f}"
              f"{r['skipped']:>9}{_pair(r['read_ms_p50'], r['read_ms_p99']):>18}"
              f"{_pair(r['late_ms_p50'], r['late_ms_p99']):>18}"
              f"{100 * r['server_share']:>10.0f}{r['load']:>6.1f}"
              + (f"  [{_starved(r)}]" if _starved(r) else ""), flush=True)
    base = results[0]
    for r in results[1:]:
        why = _starved(base) or _starved(r)
        if why:
            print(f"CPU per device at {r['devices']} vs {base['devices']}: refused ({why})")
            continue
        ratio = (r["cpu_pct"] / r["devices"]) / (base["cpu_pct"] / base["devices"])
        print(f"CPU per device at {r['devices']} vs {base['devices']}: x{ratio:.2f} "
              f"(flat = within 1.2x)")
    if args.json:
        print(json.dumps(results))
    return 0


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.1f}/{b:.1f}"


if __name__ == "__main__":
    sys.exit(main())
