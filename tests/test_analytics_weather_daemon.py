"""The weather-forecast feed in the daemon: the simulator serves its synthetic Open-Meteo
forecast on loopback (as the demo wires it), the daemon's feed reports it fresh in the
``forecast`` reply; when the server goes away the feed turns stale with the reason and the
daemon goes on polling; a feed pointed at a dead port says why it has no forecast."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.apiclient import ApiClient
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.demo import serve_weather_forecast, with_ports
from sim_devices.runner import SimRunner
from tests.waiting import until_async


def site(tmp: Path, feed: dict[str, Any] | None = None) -> SiteConfig:
    analytics: dict[str, Any] = {"detect": False}
    if feed is not None:
        analytics["weather_feed"] = feed
    return SiteConfig.model_validate({
        "site": {"name": "wx", "timezone": "Europe/Berlin", "latitude": 48.0,
                 "longitude": 7.8},
        "gateways": [{"id": "gw1", "api_socket": str(tmp / "api.sock")}],
        "connections": [{"id": "tcp", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1,
                         "timeout_s": 0.5, "reconnect_delay_s": 0.1}],
        "devices": [{"id": "pv", "nature": "pv_inverter", "template": "sunspec_inverter",
                     "connection": "tcp", "unit_id": 1, "poll_interval_s": 0.1,
                     "ratings": {"p_max_kw": 10, "kwp": 11}}],
        "historian": {"path": str(tmp / "h.sqlite"), "flush_interval_s": 0.2},
        "analytics": analytics,
        "simulation": {"seed": 3, "clock": {"start": "2025-06-21T10:00:00+00:00"}},
    })


@asynccontextmanager
async def running(cfg: SiteConfig, serve: bool
                  ) -> AsyncIterator[tuple[Any, Daemon, ApiClient]]:
    runner = SimRunner(cfg, port_overrides={"tcp": 0}, step_s=0.05)
    ports = await runner.start()
    live = with_ports(cfg, ports)
    server = None
    if serve:
        server, live = serve_weather_forecast(live, runner)
    daemon = Daemon(live)
    try:
        await daemon.start()
        async with ApiClient(daemon.socket_path) as client:
            yield server, daemon, client
    finally:
        await daemon.shutdown()
        await runner.stop()
        if server is not None:
            server.close()  # type: ignore[attr-defined]


def dead_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def polls_go_on(client: ApiClient) -> None:
    """The PV inverter keeps being read: its poll count still grows."""
    def polls(snap: dict[str, Any]) -> int:
        return int(snap["devices"]["pv"]["polls"])

    first = polls(await client.request("snapshot"))

    async def more() -> bool:
        return polls(await client.request("snapshot")) > first
    await until_async(more, "the PV inverter to be polled again")


async def test_feed_from_the_simulator_is_fresh_then_stale_when_it_goes(tmp_path: Path) -> None:
    # the demo's wiring: the URL is filled in with the simulator's port
    cfg = site(tmp_path, {"url": "http://127.0.0.1:1/v1/forecast", "refresh_s": 0.2,
                          "max_age_s": 1.0, "timeout_s": 1.0})
    async with running(cfg, serve=True) as (server, _daemon, client):
        assert server is not None

        async def state(want: str) -> bool:
            r = await client.request("forecast")
            return bool(r["weather"]["state"] == want)
        await until_async(lambda: state("fresh"), "the weather feed to be fresh")
        r = await client.request("forecast")
        assert r["weather"]["source"] == server.url  # type: ignore[attr-defined]
        assert r["weather"]["status"].startswith("weather forecast from http://127.0.0.1:")
        assert r["weather"]["error"] is None
        server.close()  # type: ignore[attr-defined]
        await until_async(lambda: state("stale"), "the weather feed to go stale")
        w = (await client.request("forecast"))["weather"]
        assert "stale since" in w["status"]
        assert "using the model without weather" in w["status"]
        assert "cannot read the forecast" in w["error"]
        await polls_go_on(client)


async def test_feed_at_a_dead_port_says_why_and_the_daemon_keeps_working(tmp_path: Path
                                                                         ) -> None:
    url = f"http://127.0.0.1:{dead_port()}/v1/forecast"
    cfg = site(tmp_path, {"url": url, "refresh_s": 0.2, "max_age_s": 1.0, "timeout_s": 1.0})
    async with running(cfg, serve=False) as (_server, _daemon, client):
        async def failed() -> bool:
            r = await client.request("forecast")
            return r["weather"]["error"] is not None
        await until_async(failed, "the weather feed to report its failure")
        w = (await client.request("forecast"))["weather"]
        assert w["state"] == "none" and w["source"] == url
        assert "cannot read the forecast" in w["error"] and url in w["error"]
        assert w["status"].startswith(f"no weather forecast yet from {url}, using the model "
                                      f"without weather (")
        await polls_go_on(client)


async def test_without_a_feed_the_reply_says_so(tmp_path: Path) -> None:
    async with running(site(tmp_path), serve=False) as (_s, _d, client):
        w = (await client.request("forecast"))["weather"]
        assert w["state"] == "off" and "analytics.weather_feed" in w["status"]
