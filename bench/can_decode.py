"""CAN frame decode throughput: the AutoGrid CAN driver against bare cantools, same run.

    python bench/can_decode.py [--frames 200000] [--seconds 10]

The frames are what the simulated BMS and DC charger send (every periodic message of the
shipped CAN templates, payloads encoded from random point values by the simulated
nodes), as python-can Message objects, in bus order. Then, in turn, over the same list:
  baseline  bare cantools: look the message up by frame id, ``Message.decode(data)``
            (every signal, scaled, value tables applied), as most CAN code does;
  gateway   the AutoGrid path per frame: the link's dispatch by frame id to the device,
            the device's slot update (length check, receive time), and the decode of
            that message's points to standard points (compiled decoders, template scale,
            enums, flags).
Printed: frames/s for both and the ratio gateway/baseline (> 1 = faster than cantools).
Bounded: each phase stops after --frames frames or --seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

# This file is called can.py: drop its own folder from the path, or "import can" below
# would find this script instead of python-can.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import can  # noqa: E402

from drivers.can.device import CanDeviceIO  # noqa: E402
from drivers.can.driver import CanDriver  # noqa: E402
from drivers.can.template import CanTemplate  # noqa: E402
from drivers.template import load_template, template_names  # noqa: E402
from gateway.config.models import SiteConfig  # noqa: E402
from gateway.model import NATURES, Kind  # noqa: E402
from sim_devices.can_nodes import NODE_TYPES, CanNode  # noqa: E402


def site() -> SiteConfig:
    names = [n for n in template_names() if isinstance(load_template(n), CanTemplate)]
    return SiteConfig.model_validate({
        "site": {"name": "can bench"}, "gateways": [{"id": "gw"}],
        "connections": [{"id": "bus", "type": "can", "interface": "virtual",
                         "channel": "bench"}],
        "devices": [{"id": n, "nature": str(load_template(n).nature), "template": n,
                     "connection": "bus"} for n in names],
        "historian": {"enabled": False}})


class _RandomModel:
    """Point values for the simulated nodes' encoders: random, within sane ranges."""

    def __init__(self, tpl: CanTemplate, rng: random.Random) -> None:
        self.tpl, self.rng = tpl, rng

    def read_points(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in self.tpl.points:
            kind = NATURES[self.tpl.nature][name].kind
            out[name] = (self.rng.random() < 0.5 if kind is Kind.BOOL
                         else self.rng.choice("ABCDEF") if kind is Kind.STR
                         else self.rng.randrange(0, 1 << 14) if kind is Kind.INT
                         else round(self.rng.uniform(0, 100), 3))
        return out


def frames(cfg: SiteConfig, n: int) -> list[can.Message]:
    """``n`` frames in bus order: every periodic message of every device, round robin."""
    rng = random.Random(1)
    pool: list[can.Message] = []
    for dev in cfg.devices:
        tpl = load_template(dev.template)
        node: CanNode = NODE_TYPES.get(dev.nature, CanNode)(dev, tpl, _RandomModel(tpl, rng),
                                                            None)
        for _ in range(50):
            values = node.model.read_points()
            for msg in node.periodic:
                pool.append(can.Message(arbitration_id=node.arbitration_id(msg),
                                        is_extended_id=msg.is_extended_frame,
                                        data=node.encode(msg, values)))
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def bench_baseline(cfg: SiteConfig, msgs: list[can.Message], seconds: float) -> tuple[int, float]:
    by_id = {}
    for dev in cfg.devices:
        for m in load_template(dev.template).database.messages:
            by_id[(m.frame_id, m.is_extended_frame)] = m
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    done = 0
    for i, msg in enumerate(msgs):
        dbc_msg = by_id.get((msg.arbitration_id, msg.is_extended_id))
        if dbc_msg is not None:
            dbc_msg.decode(msg.data)
        if i & 1023 == 0 and time.perf_counter() > deadline:
            break
        done += 1
    return done, time.perf_counter() - t0


def bench_gateway(cfg: SiteConfig, msgs: list[can.Message], seconds: float) -> tuple[int, float]:
    driver = CanDriver(bus_factory=lambda conn: can.Bus(interface="virtual",
                                                       channel="bench-unused"))
    ios: list[CanDeviceIO] = [driver.attach(d, load_template(d.template),
                                            cfg.connection(d.connection))
                              for d in cfg.devices]
    link = next(iter(driver.links.values()))
    # which device/message each frame id feeds (the link's dispatch does the routing)
    route: dict[tuple[int, bool], tuple[CanDeviceIO, str]] = {}
    for io in ios:
        for name, slot in io.slots.items():
            route[(slot.arbitration_id, slot.message.is_extended_frame)] = (io, name)
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    done = 0
    for i, msg in enumerate(msgs):
        link.deliver(msg)
        hit = route.get((msg.arbitration_id, msg.is_extended_id))
        if hit is not None:
            hit[0].decode(hit[1])
        if i & 1023 == 0 and time.perf_counter() > deadline:
            break
        done += 1
    return done, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; best counts")
    ap.add_argument("--seconds", type=float, default=5.0, help="cap per phase and round")
    args = ap.parse_args()
    cfg = site()
    msgs = frames(cfg, args.frames)
    print(f"{len(msgs)} frames x {args.rounds} rounds, {len(cfg.devices)} CAN templates "
          f"({', '.join(d.template for d in cfg.devices)}); best round of each counts "
          f"(the machine may be busy)")
    best_b = best_g = 0.0
    for _ in range(args.rounds):
        n_b, t_b = bench_baseline(cfg, msgs, args.seconds)
        n_g, t_g = bench_gateway(cfg, msgs, args.seconds)
        best_b, best_g = max(best_b, n_b / t_b), max(best_g, n_g / t_g)
    print(f"baseline (cantools Message.decode)          {best_b:12,.0f} frames/s")
    print(f"gateway  (dispatch + slot + point decode)   {best_g:12,.0f} frames/s")
    print(f"ratio gateway/baseline: {best_g / best_b:.2f}")


if __name__ == "__main__":
    main()
