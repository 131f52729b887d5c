"""Console cost and latency: the real `autogrid console` in a pseudo-terminal, fed by an API
server whose 500 points all change 10 times a second.

    python bench/console.py [--devices 10] [--points 50] [--seconds 8] [--samples 20]

One run, three measurements on the same console process (Devices screen, detail of the
first device, 100x30 terminal):
  idle      the server is up but no value changes: the console's own cost (its 4 Hz tick,
            2 Hz summary, 0.5 Hz lists);
  loaded    every point changes every 100 ms (500 points -> 5000 changes/s); the console
            gets coalesced updates every 0.25 s and redraws at most 4 times a second;
  latency   a marker point changes to a new unique number; the time until that number is
            written to the terminal (state update at the gateway -> bytes on the tty).
Printed: console CPU % idle and loaded and their ratio, terminal bytes/s, update events/s,
and latency p50/p95/max. A value read from a real device adds the device's poll interval
on top (the gateway stores a reading the moment its poll returns).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.api import ApiServer
from gateway.model import Nature
from gateway.state import DeviceState, SiteState

REPO = Path(__file__).resolve().parent.parent


def build_state(n_dev: int, n_pts: int) -> SiteState:
    state = SiteState()
    now = time.time()
    for d in range(n_dev):
        dev = f"bench{d:02d}"
        state.add_device(DeviceState(dev, Nature.METER, max_age_s=60, protocol="synthetic"))
        values: dict[str, Any] = {f"x{p:03d}": float(p) for p in range(n_pts - 1)}
        values["a_marker"] = 0
        state.update(dev, values, now)
    return state


class Tty:
    """The console in a pty; output is drained continuously and searched for markers."""

    def __init__(self, sock: Path) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        env = {**os.environ, "LANG": "C.UTF-8", "TERM": "xterm", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "console", "--socket", str(sock),
             "--screen", "devices"], stdin=slave, stdout=slave, stderr=slave, env=env,
            start_new_session=True, close_fds=True)
        os.close(slave)
        self.bytes = 0
        self.tail = b""
        self.waiters: list[tuple[bytes, asyncio.Future[float]]] = []
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        now = time.perf_counter()
        self.bytes += len(chunk)
        self.tail = (self.tail + chunk)[-200_000:]
        for marker, fut in list(self.waiters):
            if marker in self.tail and not fut.done():
                fut.set_result(now)
                self.waiters.remove((marker, fut))

    def expect(self, marker: bytes) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters.append((marker, fut))
        return fut

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def cpu(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    async def close(self) -> None:
        self.send(b"q")
        for _ in range(50):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


async def feed(state: SiteState, n_pts: int, period_s: float, stop: asyncio.Event) -> None:
    k = 0
    while not stop.is_set():
        k += 1
        now = time.time()
        for dev in list(state.devices):
            state.update(dev, {f"x{p:03d}": float(p) + k * 0.1 for p in range(n_pts - 1)}, now)
        await asyncio.sleep(period_s)


async def measure_cpu(tty: Tty, seconds: float, label: str) -> tuple[float, float]:
    c0, b0, t0 = tty.cpu(), tty.bytes, time.perf_counter()
    await asyncio.sleep(seconds)
    c1, b1, t1 = tty.cpu(), tty.bytes, time.perf_counter()
    pct = 100 * (c1 - c0) / (t1 - t0)
    rate = (b1 - b0) / (t1 - t0)
    print(f"  {label:<8} console CPU {pct:5.1f} %   terminal output {rate / 1024:7.1f} KiB/s")
    return pct, rate


async def main(args: argparse.Namespace) -> None:
    n_points = args.devices * args.points
    with tempfile.TemporaryDirectory() as tmp:
        state = build_state(args.devices, args.points)
        api = ApiServer(state, Path(tmp) / "bench.sock", "bench", lambda: {"devices": {}})
        await api.start()
        tty = Tty(api.path)
        try:
            await asyncio.wait_for(tty.expect(b"bench00"), 30)
            tty.send(b"\r")  # detail of bench00: a_marker is its first row
            await asyncio.wait_for(tty.expect(b"a_marker"), 10)
            await asyncio.sleep(2.0)
            print(f"console on {args.devices} devices x {args.points} points = {n_points} "
                  f"points, 100x30 terminal, {args.seconds:.0f} s per phase")
            idle, _ = await measure_cpu(tty, args.seconds, "idle")
            stop = asyncio.Event()
            feeder = asyncio.create_task(feed(state, args.points, 0.1, stop))
            await asyncio.sleep(1.0)
            loaded, _ = await measure_cpu(tty, args.seconds, "loaded")
            print(f"  loaded/idle CPU ratio {loaded / idle if idle > 0 else float('inf'):.1f}x"
                  f"  ({n_points * 10} point changes/s at the gateway)")
            lat = []
            for i in range(args.samples):
                await asyncio.sleep(0.137 * (i % 7) + 0.05)  # not in step with the ticks
                val = 9_000_000 + i
                fut = tty.expect(str(val).encode())
                t0 = time.perf_counter()
                state.update("bench00", {"a_marker": val}, time.time())
                lat.append((await asyncio.wait_for(fut, 10) - t0) * 1000)
            stop.set()
            await feeder
            lat.sort()
            p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
            print(f"  latency value change -> on screen (n={len(lat)}, under load): "
                  f"p50 {statistics.median(lat):.0f} ms  p95 {p95:.0f} ms  max {lat[-1]:.0f} ms")
        finally:
            await tty.close()
            await api.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--points", type=int, default=50)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--samples", type=int, default=20)
    asyncio.run(main(p.parse_args()))
