"""The ownership log a takeover keeps (``<gw>.cluster-owned.jsonl``) must hold its own
rule: every write it records falls inside a period it records as held. Found in CI: a write
that was the last IO before the process froze is stamped (by the applier, at its answer)
a few microseconds after the gate's last-IO time, which used to end the held period, so the
history checker saw the write outside it. And a write that found no handle never reached the
device, so it is not a device write."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from drivers.base import DeviceIO, IOStats
from gateway.alarms import AlarmStore
from gateway.cluster.component import ClusterComponent
from gateway.cluster.etcdproc import EtcdCluster
from gateway.cluster.store import StandaloneStore
from gateway.cluster.takeover import GatedIO
from gateway.config.models import SiteConfig
from gateway.control.applier import Applier
from gateway.daemon import Daemon
from gateway.model import PointValue
from tests.cluster_history import check_ownership
from tests.cluster_sim_site import site_dict


class _Bat(DeviceIO):
    def __init__(self) -> None:
        self.device_id, self.endpoint, self.stats = "bat", "tcp://test", IOStats()
        self.written: list[tuple[str, PointValue]] = []

    async def read(self) -> Mapping[str, PointValue | None]:
        return {}

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        self.written.append((point, value))
        return value


async def test_the_last_write_before_a_detach_lies_inside_the_held_period(
        tmp_path: Path) -> None:
    etcd = EtcdCluster.loopback(["gw-a", "gw-b"], tmp_path / "etcd")  # (not started)
    raw = site_dict(tmp_path, etcd, ["gw-a", "gw-b"], standby={"bat": ["gw-b"]})
    daemon = Daemon(SiteConfig.model_validate(raw), "gw-a")
    applier = Applier(daemon.ios, daemon.state, AlarmStore(None))
    daemon.ports.applier = applier
    comp = ClusterComponent(daemon, StandaloneStore("gw-a", None))  # (no lease: not fresh)
    try:
        tk = comp.takeover
        applier.on_outcome.append(tk._outcome)
        bat = _Bat()
        daemon.ios["bat"] = GatedIO(bat, lambda: True)
        tk.held.add("bat")
        tk._log("attach", "bat")
        fut = applier.command("bat", "p_set_kw", 5.0)
        assert fut is not None
        assert (await fut).ok and bat.written == [("p_set_kw", 5.0)]
        await tk._detach("bat", "gw-b", "its lease lapsed")
        # A write queued just before its handle went finds none: failed, not a device write.
        daemon.ios["bat"] = bat
        orphan = applier.command("bat", "p_set_kw", 6.0)
        del daemon.ios["bat"]
        assert orphan is not None
        o = await orphan
        assert not o.ok and not o.sent and bat.written == [("p_set_kw", 5.0)]
        rows = [json.loads(line) for line in tk.path.read_text().splitlines()]
        assert [r["event"] for r in rows] == ["attach", "write", "detach"]
        assert check_ownership({"gw-a": rows}, {}) == {"gw-a": 1}
    finally:
        await applier.stop()
