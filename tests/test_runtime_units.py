"""Unit tests of the runtime pieces with a fake DeviceIO (no network)."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from pathlib import Path

import pytest

from drivers.base import DeviceIO, DeviceTimeout, IOStats
from gateway.api import ApiServer
from gateway.apiclient import ApiClient, ApiRequestError, ApiUnavailable
from gateway.config.models import Historian as HistorianConfig
from gateway.export import export_csv, read_history
from gateway.historian import Historian
from gateway.model import Nature, PointValue, Quality
from gateway.poller import Poller
from gateway.state import DeviceState, SiteState
from tests.waiting import WAIT_S, until


class FakeIO(DeviceIO):
    """Unit-test stand-in for a driver: returns queued values or raises."""

    def __init__(self, device_id: str, values: dict[str, PointValue | None]) -> None:
        self.device_id = device_id
        self.endpoint = "fake://"
        self.stats = IOStats()
        self.values = values
        self.fail: Exception | None = None
        self.reads = 0

    async def read(self) -> dict[str, PointValue | None]:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return dict(self.values)

    async def write(self, point: str, value: PointValue) -> PointValue | None:
        self.values[point] = value
        return value


def site() -> SiteState:
    s = SiteState()
    s.add_device(DeviceState("meter", Nature.METER, max_age_s=2.0))
    s.add_device(DeviceState("pv", Nature.PV_INVERTER, max_age_s=2.0))
    s.add_device(DeviceState("bat", Nature.BESS, max_age_s=2.0, capacity_kwh=50))
    s.add_device(DeviceState("ev", Nature.EVSE, max_age_s=2.0))
    return s


def test_quality_good_stale_offline() -> None:
    s = site()
    s.update("pv", {"p_kw": 10.0}, ts=1000.0)
    dev = s.devices["pv"]
    assert dev.device_quality(1001.0) is Quality.GOOD
    assert dev.quality_at(dev.readings["p_kw"], 1001.0) is Quality.GOOD
    assert dev.quality_at(dev.readings["p_kw"], 1003.0) is Quality.STALE
    assert dev.value("p_kw", now=1003.0) is None  # stale values are not used
    assert s.fail("pv", "timeout", 1001.5) is True
    assert s.fail("pv", "timeout", 1002.5) is False  # only the first failure is a change
    assert dev.device_quality(1001.6) is Quality.OFFLINE
    assert dev.readings["p_kw"].value == 10.0  # last value kept, marked offline
    assert dev.readings["p_kw"].quality is Quality.OFFLINE
    s.update("pv", {"p_kw": 10.0}, ts=1004.0)
    assert dev.readings["p_kw"].quality is Quality.GOOD


def test_change_listener_only_gets_changes() -> None:
    s = site()
    seen: list[tuple[str, set[str]]] = []
    s.on_change(lambda d, ch: seen.append((d, set(ch))))
    s.update("pv", {"p_kw": 1.0, "state": "mppt"}, ts=1.0)
    s.update("pv", {"p_kw": 1.0, "state": "throttled"}, ts=2.0)
    s.update("pv", {"p_kw": 1.0, "state": "throttled"}, ts=3.0)
    assert seen == [("pv", {"p_kw", "state"}), ("pv", {"state"})]


def test_summary_power_balance() -> None:
    s = site()
    now = 100.0
    s.update("meter", {"p_kw": 5.0}, now)
    s.update("pv", {"p_kw": 20.0}, now)
    s.update("bat", {"p_kw": -10.0, "soc_pct": 60.0}, now)
    s.update("ev", {"p_kw": 7.0}, now)
    summ = s.summary(now)
    # load = grid + pv + battery(+discharge) - ev = 5 + 20 - 10 - 7
    assert summ["load_kw"] == pytest.approx(8.0)
    assert summ["battery_soc_pct"] == pytest.approx(60.0)
    assert summ["devices"] == {"good": 4, "stale": 0, "offline": 0}


async def test_poller_marks_offline_and_recovers() -> None:
    s = site()
    fio = FakeIO("pv", {"p_kw": 3.0})
    poller = Poller(s)
    poller.add(fio, 0.05)
    health = s.devices["pv"].health
    await until(lambda: health.quality is Quality.GOOD, "the first good poll")
    assert s.devices["pv"].health.quality is Quality.GOOD
    fio.fail = DeviceTimeout("no answer within 1.0 s")
    await until(lambda: health.quality is Quality.OFFLINE, "the failing poll")
    assert s.devices["pv"].health.quality is Quality.OFFLINE
    assert s.devices["pv"].health.last_error == "no answer within 1.0 s"
    fio.fail = None
    await until(lambda: health.quality is Quality.GOOD and fio.reads >= 5, "recovery")
    assert s.devices["pv"].health.quality is Quality.GOOD
    await poller.stop()
    assert fio.reads >= 5


async def test_poller_survives_driver_bug() -> None:
    s = site()
    fio = FakeIO("pv", {})
    fio.fail = ZeroDivisionError("bug")
    poller = Poller(s)
    poller.add(fio, 0.02)
    await until(lambda: fio.reads >= 2, "a second poll after the exception")
    await poller.stop()
    assert fio.reads >= 2  # kept polling after the exception
    assert "ZeroDivisionError" in (s.devices["pv"].health.last_error or "")


async def test_historian_batches_and_exports(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    h = Historian(HistorianConfig(path=db, flush_interval_s=0.05, batch_size=1000))
    await h.start()
    s = site()
    s.on_change(h.record)
    t0 = time.time() - 100  # recent: older rows would fall to retention
    for i in range(50):
        s.update("pv", {"p_kw": float(i), "state": "mppt" if i % 2 else "throttled"}, t0 + i)
    await asyncio.sleep(0.2)
    s.fail("pv", "gone", t0 + 60)
    await h.stop()  # flushes the rest
    with sqlite3.connect(db) as con:
        n = con.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    assert n == 50 * 2 + 2  # every change, plus the two readings going offline
    assert mode == "wal"
    df = read_history(db, devices=["pv"])
    assert set(df["point"]) == {"p_kw", "state"}
    assert list(df[df["point"] == "p_kw"]["value"])[:3] == [0.0, 1.0, 2.0]
    assert df["quality"].iloc[-1] == "offline"
    buf = io.StringIO()
    rows = export_csv(db, buf, wide=True)
    header = buf.getvalue().splitlines()[0]
    assert "pv.p_kw" in header and "pv.state" in header
    assert rows == 51


async def test_api_snapshot_subscribe_and_errors(tmp_path: Path) -> None:
    s = site()
    sock = tmp_path / "api.sock"
    api = ApiServer(s, sock, "gw1")
    await api.start()
    try:
        async with ApiClient(sock) as c:
            assert (await c.request("ping"))["gateway"] == "gw1"
            s.update("pv", {"p_kw": 12.5}, 1e9)
            snap = await c.request("snapshot")
            assert snap["devices"]["pv"]["points"]["p_kw"]["value"] == 12.5
            with pytest.raises(ApiRequestError, match="unknown command 'frobnicate'"):
                await c.request("frobnicate")
            with pytest.raises(ApiRequestError, match="unknown device 'nope'"):
                await c.request("device", device="nope")
            events = c.subscribe(devices=["pv"], interval_s=0.05)

            async def first_event() -> dict[str, object]:
                async for ev in events:
                    return ev
                raise AssertionError("stream ended")

            listeners = len(s._listeners)
            waiter = asyncio.create_task(first_event())
            # the updates below count only once the server holds the subscription
            await until(lambda: len(s._listeners) > listeners, "the subscription")
            s.update("meter", {"p_kw": 1.0}, 1e9 + 1)  # not subscribed: filtered out
            s.update("pv", {"p_kw": 13.0}, 1e9 + 1)
            ev = await asyncio.wait_for(waiter, WAIT_S)
            assert ev["changes"] == {"pv": {"p_kw": {"value": 13.0, "unit": "kW",
                                                    "ts": 1e9 + 1, "quality": "good"}}}
            await events.aclose()
        # a second daemon on the same socket is refused while the first is alive
        with pytest.raises(RuntimeError, match="already listening"):
            await ApiServer(s, sock, "gw1").start()
    finally:
        await api.stop()
    assert not sock.exists()
    with pytest.raises(ApiUnavailable, match="not running"):
        await ApiClient(sock).connect()


async def test_api_rejects_garbage(tmp_path: Path) -> None:
    s = site()
    sock = tmp_path / "api.sock"
    api = ApiServer(s, sock, "gw1")
    await api.start()
    try:
        r, w = await asyncio.open_unix_connection(str(sock))
        w.write(b"this is not json\n[1,2]\n")
        await w.drain()
        a = await asyncio.wait_for(r.readline(), 2)
        b = await asyncio.wait_for(r.readline(), 2)
        assert b"not valid JSON" in a
        assert b"JSON object" in b
        w.close()
        await w.wait_closed()
    finally:
        await api.stop()


async def test_api_registered_command_and_role_refusal(tmp_path: Path) -> None:
    s = site()
    sock = tmp_path / "api.sock"
    api = ApiServer(s, sock, "gw1")
    calls: list[tuple[dict[str, object], str]] = []

    async def estop(req: dict[str, object], caller: object) -> dict[str, object]:
        calls.append((req, getattr(caller, "user", "")))
        return {"mode": "emergency_stop"}

    api.register("estop", estop, role="operator", help="stop everything")
    with pytest.raises(ValueError, match="already registered"):
        api.register("estop", estop)
    await api.start()
    try:
        async with ApiClient(sock) as c:  # we are the daemon's own user: engineer
            assert (await c.request("estop", reason="test"))["mode"] == "emergency_stop"
            me = await c.request("ping")
            assert me["role"] == "engineer" and calls[0][1] == me["user"]
            listed = {x["cmd"]: x for x in await c.request("commands")}
            assert listed["estop"] == {"cmd": "estop", "role": "operator",
                                       "help": "stop everything", "allowed": True}
        api.role_of = lambda uid, gid: "viewer"
        async with ApiClient(sock) as c:
            with pytest.raises(ApiRequestError, match=r"'estop' needs the operator role; .* is "
                                                      r"viewer"):
                await c.request("estop")
            assert (await c.request("summary"))["devices"]["good"] == 0  # viewing still works
        assert len(calls) == 1
    finally:
        await api.stop()
