"""CAN flood: the AutoGrid slcan reader against a bare python-can slcan reader, same run.

    python bench/can_flood.py [--rate 4500] [--seconds 8] [--rounds 3]

A flooder (this process) plays a USB-CAN adapter on a pseudo-terminal: it writes slcan
frames of ids no device uses at --rate frames/s (4.5k/s is a 500 kbit/s bus at 100 %
load) and, mixed in, a Pylontech-style BMS's real frames (0x351, 0x355, 0x356, 0x359,
0x373) at their DBC cycle time of 1 s; the SOC frame carries a sequence counter (SOC =
seq mod 101) so a reader can tell a gap from a late frame. When the pty is full the
adapter drops the frame, as a real adapter's buffer overflows. Then, in turn, in a fresh
process each and on a fresh pty, interleaved over the rounds:
  baseline  bare python-can: ``can.Bus(interface="slcan", channel=pty)``, ``recv`` in a
            loop, counting the BMS frames;
  gateway   the AutoGrid CAN link and driver: the Pylontech BMS template attached to the
            pty, its device read every 100 ms as the poller would.
Printed per run: the reader's CPU (process CPU time / wall time, % of one core; and CPU
per frame it read, which a busy machine does not cap), the frames the flooder offered
and dropped, the BMS frames lost (sent - received) and SOC
sequence gaps. Summary: the median CPU of each and the ratio gateway/baseline over the
rounds where the flooder reached 95 % of its target rate in both runs; when it did not,
no ratio is printed ("flooder starved": the machine was too busy to make the load).
Bounded: each run stops after --seconds of flood plus a drain of at most 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import multiprocessing as mp
import os
import platform
import select
import statistics
import sys
import time
import tty
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BMS_MESSAGES = ("BMS_Limits", "BMS_SOC", "BMS_Status", "BMS_Alarms", "BMS_CellExtremes")
FLOOD_IDS = tuple(range(0x600, 0x610))  # ids no template uses
END_ID = 0x7EE  # "flood over": the reader stops once it has read up to here
BMS_PERIOD_S = 1.0
DRAIN_S = 20.0
STARVED = 0.95  # the flooder must offer this share of its target rate


def bms_frames() -> dict[int, bytes]:
    """The BMS's frames (good values of a 16-cell LFP pack), by id."""
    from drivers.template import load_template

    tpl = load_template("pylontech_bms_can")
    good = {"ChargeVoltageLimit": 56.8, "ChargeCurrentLimit": 100.0,
            "DischargeCurrentLimit": 100.0, "DischargeVoltageLimit": 46.4, "SOC": 50,
            "SOH": 100, "PackVoltage": 53.2, "PackCurrent": 0.0, "AvgTemperature": 25.0,
            "MinCellVoltage": 3.32, "MaxCellVoltage": 3.34, "MinCellTemperature": 24,
            "MaxCellTemperature": 26, "ModuleCount": 2, "MarkerP": 80, "MarkerN": 78}
    out = {}
    for name in BMS_MESSAGES:
        msg = tpl.message(name)
        values = {s.name: good.get(s.name, 0) for s in msg.signals}
        out[msg.frame_id] = bytes(msg.encode(values, scaling=True, strict=False))
    return out


def line(arb: int, data: bytes) -> bytes:
    return f"t{arb:03X}{len(data)}{data.hex().upper()}\r".encode()


# -- readers (each in its own process) ---------------------------------------------------

def _cpu() -> float:
    return time.process_time()


def _baseline_main(path: str, pipe: Connection, deadline_s: float) -> None:
    import can

    bms = set(bms_frames())
    got = dict.fromkeys(bms, 0)
    seqs: list[int] = []
    bus = can.Bus(interface="slcan", channel=path, bitrate=500_000, sleep_after_open=0)
    pipe.send("ready")
    t0, c0 = time.monotonic(), _cpu()
    stop_at = t0 + deadline_s
    try:
        while time.monotonic() < stop_at:
            msg = bus.recv(0.05)
            if msg is None:
                continue
            if msg.arbitration_id in got:
                got[msg.arbitration_id] += 1
                if msg.arbitration_id == 0x355:
                    seqs.append(msg.data[0])
            elif msg.arbitration_id == END_ID:
                break
    finally:
        wall, cpu = time.monotonic() - t0, _cpu() - c0
        bus.shutdown()
    pipe.send({"wall_s": wall, "cpu_s": cpu, "got": got, "seqs": seqs, "offline_reads": 0})


def _gateway_main(path: str, pipe: Connection, deadline_s: float) -> None:
    from drivers.base import DriverError
    from drivers.can.driver import CanDriver
    from drivers.template import load_template
    from gateway.config.models import SiteConfig

    cfg = SiteConfig.model_validate({
        "site": {"name": "flood"}, "gateways": [{"id": "gw"}],
        "connections": [{"id": "bus", "type": "can", "interface": "slcan", "channel": path,
                         "frame_timeout_s": 3.0}],
        "devices": [{"id": "bms", "nature": "bms", "template": "pylontech_bms_can",
                     "connection": "bus"}],
        "historian": {"enabled": False}})

    async def main() -> dict[str, Any]:
        driver = CanDriver()
        dev = cfg.devices[0]
        io = driver.attach(dev, load_template(dev.template), cfg.connection("bus"))
        link = next(iter(driver.links.values()))
        ended = asyncio.Event()
        seqs: list[int] = []
        link.subscribe(END_ID, lambda data, ts: ended.set())
        link.subscribe(0x355, lambda data, ts: seqs.append(data[0]))
        slots = {s.arbitration_id: s for s in io.slots.values()}
        try:
            await link.ensure_open()
            pipe.send("ready")
            t0, c0 = time.monotonic(), _cpu()
            offline = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline_s):
                    while not ended.is_set():
                        try:
                            await io.read()
                        except DriverError:
                            offline += 1
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.1):
                                await ended.wait()
            wall, cpu = time.monotonic() - t0, _cpu() - c0
            return {"wall_s": wall, "cpu_s": cpu, "offline_reads": offline, "seqs": seqs,
                    "got": {arb: s.frames for arb, s in slots.items()},
                    "dropped_ids": len(link.dropped_by_key())}
        finally:
            await driver.close()

    pipe.send(asyncio.run(main()))


# -- the flooder (this process) ----------------------------------------------------------

class Flooder:
    """A simulated adapter on a fresh pty: writes without blocking; a full pty drops."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.dropped = 0

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)

    def _drain_commands(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.master, 4096):
                pass

    def write(self, data: bytes) -> int:
        """Write whole lines of ``data``; returns how many lines the pty took."""
        try:
            n = os.write(self.master, data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return data.count(b"\r")
        # finish the line cut in half (a half line would be garbage), drop the rest
        end = n if not n or data[n - 1:n] == b"\r" else data.find(b"\r", n) + 1
        deadline = time.monotonic() + 1.0
        while n < end and time.monotonic() < deadline:
            select.select([], [self.master], [], 0.01)
            with contextlib.suppress(BlockingIOError):
                n += os.write(self.master, data[n:end])
        return data[:end].count(b"\r")

    def run(self, rate: float, seconds: float, bms: dict[int, bytes]) -> dict[str, Any]:
        """Flood for ``seconds``; the BMS frames every BMS_PERIOD_S. Returns counts."""
        flood = [line(i, bytes(8)) for i in FLOOD_IDS]
        offered = lines_ok = 0
        bms_sent = dict.fromkeys(bms, 0)
        seq = 0
        t0 = time.monotonic()
        next_bms = t0
        while True:
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            chunk = []
            if now >= next_bms:
                next_bms += BMS_PERIOD_S
                for arb, data in bms.items():
                    if arb == 0x355:
                        data = bytes([seq % 101]) + data[1:]
                        seq += 1
                    ok = self.write(line(arb, data))
                    bms_sent[arb] += 1  # offered; a full pty drops it: that is a loss
                    lines_ok += ok
            due = int((now - t0) * rate) - offered
            for k in range(max(due, 0)):
                chunk.append(flood[(offered + k) % len(flood)])
            if chunk:
                offered += len(chunk)
                lines_ok += self.write(b"".join(chunk))
            self._drain_commands()
            time.sleep(0.001)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 5.0
        while not self.write(line(END_ID, b"")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"offered_rate": offered / elapsed, "offered": offered,
                "dropped": offered + sum(bms_sent.values()) - lines_ok, "bms_sent": bms_sent}


def run_one(kind: str, rate: float, seconds: float, bms: dict[int, bytes]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    flooder = Flooder()
    parent, child = ctx.Pipe()
    target = _gateway_main if kind == "gateway" else _baseline_main
    proc = ctx.Process(target=target, args=(flooder.path, child, seconds + DRAIN_S))
    proc.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError(f"{kind} reader did not start")
        flooded = flooder.run(rate, seconds, bms)
        if not parent.poll(seconds + DRAIN_S + 10):
            raise RuntimeError(f"{kind} reader did not report")
        result: dict[str, Any] = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        flooder.close()
    result.update(flooded)
    result["lost"] = sum(max(flooded["bms_sent"][a] - result["got"].get(a, 0), 0)
                         for a in flooded["bms_sent"])
    seqs = result["seqs"]
    result["gaps"] = sum(((b - a) % 101) - 1 for a, b in itertools.pairwise(seqs))
    result["cpu_pct"] = 100.0 * result["cpu_s"] / max(result["wall_s"], 1e-9)
    taken = flooded["offered"] + sum(flooded["bms_sent"].values()) - flooded["dropped"]
    result["us_per_frame"] = 1e6 * result["cpu_s"] / max(taken, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=4500.0, help="unknown-id frames/s")
    ap.add_argument("--seconds", type=float, default=8.0, help="flood per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3)")
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("--rounds must be at least 3 (one round says nothing on a busy machine)")
    bms = bms_frames()
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}; "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    print(f"flood: {args.rate:.0f} frames/s of {len(FLOOD_IDS)} unknown ids + BMS "
          f"{len(bms)} frames every {BMS_PERIOD_S:g} s, {args.seconds:g} s x "
          f"{args.rounds} rounds, readers alternate")
    cpu: dict[str, list[float]] = {"baseline": [], "gateway": []}
    per_frame: dict[str, list[float]] = {"baseline": [], "gateway": []}
    lost: dict[str, int] = {"baseline": 0, "gateway": 0}
    starved = 0
    for r in range(args.rounds):
        order = ("baseline", "gateway") if r % 2 == 0 else ("gateway", "baseline")
        runs = {kind: run_one(kind, args.rate, args.seconds, bms) for kind in order}
        fed = all(x["offered_rate"] >= STARVED * args.rate for x in runs.values())
        for kind in order:
            x = runs[kind]
            print(f"round {r + 1} {kind:8s} CPU {x['cpu_pct']:5.1f} % of a core "
                  f"({x['us_per_frame']:5.1f} us/frame read)  "
                  f"offered {x['offered_rate']:6.0f}/s  dropped at the pty {x['dropped']:6d}  "
                  f"BMS lost {x['lost']:3d}/{sum(x['bms_sent'].values())}  "
                  f"SOC seq gaps {x['gaps']:3d}  offline reads {x['offline_reads']}"
                  f"{'' if fed else '  (flooder starved)'}")
        if not fed:
            starved += 1
            continue
        for kind, x in runs.items():
            cpu[kind].append(x["cpu_pct"])
            per_frame[kind].append(x["us_per_frame"])
            lost[kind] += x["lost"]
    if not cpu["gateway"]:
        print(f"flooder starved in all {args.rounds} rounds: it did not reach "
              f"{STARVED:.0%} of {args.rate:.0f} frames/s; no ratio")
        return
    g, b = statistics.median(cpu["gateway"]), statistics.median(cpu["baseline"])
    print(f"baseline (python-can slcan recv loop)  CPU median {b:5.1f} % of a core, "
          f"BMS frames lost {lost['baseline']}")
    print(f"gateway  (AutoGrid link + BMS driver)  CPU median {g:5.1f} % of a core, "
          f"BMS frames lost {lost['gateway']} (target < 30 %, 0 lost)")
    print(f"ratio gateway/baseline CPU: {g / b:.2f} over {len(cpu['gateway'])} rounds"
          f"{f' ({starved} starved rounds left out)' if starved else ''}")
    # a reader that cannot keep up is capped by the core it gets (and then drops frames):
    # CPU per frame read says what it would need at the full rate
    gp, bp = statistics.median(per_frame["gateway"]), statistics.median(per_frame["baseline"])
    need = args.rate + len(bms) / BMS_PERIOD_S
    print(f"CPU per frame read: gateway {gp:.1f} us, baseline {bp:.1f} us (ratio "
          f"{gp / bp:.2f}); at {need:.0f} frames/s that is {gp * need / 1e4:.1f} % vs "
          f"{bp * need / 1e4:.1f} % of a core")


if __name__ == "__main__":
    main()
