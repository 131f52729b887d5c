"""DNP3 poll round trip: the AutoGrid DNP3 driver against a bare dnp3py master, same run.

    python bench/dnp3_poll.py [--polls 300] [--seconds 10]

One simulated site (a PCC relay with breaker + meter, and a MESA-ESS style battery, on
dnp3py outstations driven by the SimSite physics) runs in this process. Then, in turn,
against the battery's outstation:
  baseline  a bare dnp3py MasterTcpRunner: integrity poll after integrity poll;
  gateway   Dnp3DeviceIO.read() with an integrity poll due on every read (the link's
            lock, backoff bookkeeping, cache and decoding to standard points included).
Printed: mean and median round trip for both and the ratio gateway/baseline (1.0 = no
overhead). Bounded: each phase stops after --polls polls or --seconds, whichever first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

# This file is called dnp3.py: drop its own folder from the path, or "import dnp3" below
# would find this script instead of the dnp3py package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from dnp3.master.config import MasterConfig, PollingConfig  # noqa: E402
from dnp3.master.handler import DefaultSOEHandler  # noqa: E402
from dnp3.master.master import Master  # noqa: E402
from dnp3.master.tcp_runner import MasterTcpRunner  # noqa: E402

from drivers.dnp3.connection import Dnp3Tcp  # noqa: E402
from drivers.dnp3.driver import Dnp3Driver  # noqa: E402
from drivers.template import load_template  # noqa: E402
from gateway.config.models import SiteConfig  # noqa: E402
from sim_devices.runner import SimRunner  # noqa: E402

SITE = {
    "site": {"name": "dnp3 bench"},
    "gateways": [{"id": "gw1"}],
    "connections": [
        {"id": "pcc", "type": "dnp3_tcp", "host": "127.0.0.1", "port": 20000,
         "outstation_address": 10},
        {"id": "bat", "type": "dnp3_tcp", "host": "127.0.0.1", "port": 20001,
         "outstation_address": 20},
    ],
    "devices": [
        {"id": "pcc_breaker", "nature": "breaker", "template": "dnp3_pcc_relay",
         "connection": "pcc"},
        {"id": "pcc_meter", "nature": "meter", "template": "dnp3_pcc_meter",
         "connection": "pcc", "role": "grid"},
        {"id": "bess1", "nature": "bess", "template": "dnp3_mesa_bess", "connection": "bat",
         "ratings": {"p_charge_max_kw": 100, "p_discharge_max_kw": 100,
                     "capacity_kwh": 200}},
    ],
}


async def baseline(port: int, polls: int, seconds: float) -> list[float]:
    master = Master(config=MasterConfig(address=1, outstation_address=20,
                                        polling=PollingConfig(integrity_poll_interval=0.0)),
                    handler=DefaultSOEHandler())
    runner = MasterTcpRunner(master=master, host="127.0.0.1", port=port, response_timeout=2.0)
    await runner.open()
    out: list[float] = []
    stop_at = time.perf_counter() + seconds
    try:
        while len(out) < polls and time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await runner.integrity_poll()
            out.append(time.perf_counter() - t0)
    finally:
        await runner.close()
    return out


async def gateway(cfg: SiteConfig, port: int, polls: int, seconds: float) -> list[float]:
    dev = next(d for d in cfg.devices if d.id == "bess1")
    conn = Dnp3Tcp(type="dnp3_tcp", id="bat", host="127.0.0.1", port=port,
                   outstation_address=20, integrity_interval_s=1e-6, class1_interval_s=0,
                   class2_interval_s=0, class3_interval_s=0)
    driver = Dnp3Driver()
    io = driver.attach(dev, load_template(dev.template), conn)
    out: list[float] = []
    stop_at = time.perf_counter() + seconds
    try:
        await io.read()  # connect + first integrity poll, not timed
        while len(out) < polls and time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            values = await io.read()
            out.append(time.perf_counter() - t0)
        assert values["soc_pct"] is not None
    finally:
        await driver.close()
    return out


def _summary(name: str, rtts: list[float]) -> tuple[float, float]:
    mean, median = statistics.fmean(rtts), statistics.median(rtts)
    print(f"{name:9s} {len(rtts):5d} polls  mean {mean * 1000:7.3f} ms  "
          f"median {median * 1000:7.3f} ms")
    return mean, median


async def main(polls: int, seconds: float) -> None:
    cfg = SiteConfig.model_validate(SITE)
    sim = SimRunner(cfg, port_overrides={"pcc": 0, "bat": 0})
    ports = await sim.start()
    try:
        await baseline(ports["bat"], 10, seconds)  # warm up both sides
        base = await baseline(ports["bat"], polls, seconds)
        ours = await gateway(cfg, ports["bat"], polls, seconds)
    finally:
        await sim.stop()
    print(f"DNP3 integrity poll round trip (MESA-ESS style battery, "
          f"{len(load_template('dnp3_mesa_bess').points)} points), loopback:")
    b_mean, b_med = _summary("baseline", base)
    g_mean, g_med = _summary("gateway", ours)
    print(f"ratio gateway/baseline: mean {g_mean / b_mean:.3f}  median {g_med / b_med:.3f} "
          f"(1.0 = no overhead)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    asyncio.run(main(max(1, a.polls), max(0.1, a.seconds)))
