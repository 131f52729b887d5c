"""The console against a real API server in the same loop: live values through the
subscription, commands and refusals through the bridge, roles and tokens from the policy."""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.aio import cancel_and_wait
from gateway.api import ApiError, ApiServer, Caller
from gateway.apiclient import ApiRequestError
from gateway.apipolicy import ConsoleSettings, role_policy, token_policy
from gateway.console.app import ConsoleApp, run_console
from gateway.console.bridge import Bridge
from gateway.console.data import ConsoleData
from gateway.model import Nature
from gateway.state import DeviceState, SiteState
from tests.waiting import until

ME = getpass.getuser()
TOKEN = "night-shift-secret"


def make_state() -> SiteState:
    state = SiteState()
    state.add_device(DeviceState("grid_meter", Nature.METER, max_age_s=30, protocol="modbus_tcp",
                                 role="grid"))
    state.add_device(DeviceState("battery", Nature.BESS, max_age_s=30, protocol="modbus_tcp"))
    state.update("grid_meter", {"p_kw": 5.0, "v_v": 230.0}, time.time())
    state.update("battery", {"p_kw": 0.0, "soc_pct": 50.0}, time.time())
    return state


class FakeControl:
    """A stand-in control component: real API commands with recorded calls."""

    def __init__(self, api: ApiServer) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.alarms = [{"key": "battery:hot", "source": "battery", "severity": "critical",
                        "message": "cell hot", "raised_s": time.time(), "active": True,
                        "acked_by": None}]
        api.register("alarms", lambda r, c: self.alarms, role="viewer")
        api.register("audit", lambda r, c: [], role="viewer")
        api.register("alarm_ack", self.ack, role="operator")

    def ack(self, req: dict[str, Any], caller: Caller) -> Any:
        self.calls.append(("alarm_ack", {"key": req.get("key")}, caller.user))
        if req.get("key") != "battery:hot":
            raise ApiError(f"unknown alarm {req.get('key')!r}")
        self.alarms[0]["acked_by"] = caller.user
        return self.alarms[0]


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    state = make_state()
    api = ApiServer(state, tmp_path / "api.sock", "gw1", lambda: {"devices": {}})
    settings = ConsoleSettings.model_validate({
        "roles": {"viewer": [ME]},
        "tokens": [{"name": "night", "role": "operator",
                    "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]})
    api.role_of = role_policy(settings)
    api.token_caller = token_policy(settings)
    control = FakeControl(api)
    await api.start()
    try:
        yield api, state, control
    finally:
        await api.stop()


def text_of(app: ConsoleApp) -> str:
    return "\n".join(ln.decode() for ln in app.top.render((100, 30), focus=True).text)


async def settle(app: ConsoleApp) -> None:
    while app._tasks:
        await asyncio.gather(*list(app._tasks))
    app.refresh(force=True)


async def test_live_values_reach_the_screen_through_the_subscription(server: Any) -> None:
    api, state, _ = server
    data = ConsoleData()
    bridge = Bridge(api.path, data, interval_s=0.05)
    await bridge.connect()
    app = ConsoleApp(data, bridge)
    follow = asyncio.create_task(bridge.follow(lambda: None))
    try:
        app.go("devices")
        await settle(app)
        app.current.show("grid_meter")  # type: ignore[attr-defined]
        assert "5.0" in text_of(app)
        state.update("grid_meter", {"p_kw": 17.25}, time.time())
        await until(lambda: data.devices["grid_meter"]["points"]["p_kw"]["value"] == 17.25,
                    "the new value through the subscription")
        app.refresh()
        assert "17.2" in text_of(app)  # 17.25 shown with one decimal
        assert data.updates >= 1
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await bridge.close()


async def test_a_change_before_the_subscription_is_followed_is_not_lost(server: Any) -> None:
    api, state, _ = server
    data = ConsoleData()
    bridge = Bridge(api.path, data, interval_s=0.05)
    await bridge.connect()
    # the grid voltage drops right after the console's snapshot, before the console reads
    # its subscription: the change must still reach the console
    state.update("grid_meter", {"v_v": 0.0}, time.time())
    follow = asyncio.create_task(bridge.follow(lambda: None))
    try:
        await until(lambda: data.devices["grid_meter"]["points"]["v_v"]["value"] == 0.0,
                    "the change made between snapshot and subscription")
        assert data.updates >= 1
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await bridge.close()


async def test_viewer_by_policy_is_refused_by_the_console_and_by_the_daemon(server: Any
                                                                           ) -> None:
    api, _, control = server
    data = ConsoleData()
    bridge = Bridge(api.path, data)
    await bridge.connect()
    try:
        assert data.role == "viewer" and data.user == ME
        app = ConsoleApp(data, bridge)
        app.go("alarms")
        await settle(app)
        assert "cell hot" in text_of(app)
        app.handle_key("a")
        assert f"Refused: {ME} is viewer; this needs the operator role" in text_of(app)
        with pytest.raises(ApiRequestError, match="needs the operator role"):
            await bridge.call("alarm_ack", key="battery:hot")
        assert control.calls == []
    finally:
        await bridge.close()


async def test_token_gives_its_role_and_name_and_the_action_goes_through(server: Any
                                                                        ) -> None:
    api, _, control = server
    data = ConsoleData()
    bridge = Bridge(api.path, data, token=TOKEN)
    await bridge.connect()
    try:
        assert data.role == "operator" and data.user == f"night (token, {ME})"
        app = ConsoleApp(data, bridge)
        app.go("alarms")
        await settle(app)
        app.handle_key("a")
        await settle(app)
        assert control.calls == [("alarm_ack", {"key": "battery:hot"}, data.user)]
        text = text_of(app)
        assert "Done: acknowledge alarm battery:hot" in text
        assert "night (t" in text  # acked-by column, from the refreshed alarm list
        # a refusal by the daemon itself is shown with its reason
        await app._act("alarm_ack", {"key": "nope"}, "acknowledge nope", None)
        assert "Refused by the gateway: unknown alarm 'nope'" in text_of(app)
    finally:
        await bridge.close()


async def test_bad_token_and_missing_daemon_are_clear_messages(
        server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api, _, _ = server
    assert await run_console(api.path, token="wrong") == 1
    assert await run_console(tmp_path / "nothing.sock") == 1
    err = capsys.readouterr().err
    assert "autogrid console: the token is not valid for this gateway" in err
    assert "autogrid console: the daemon is not running (no socket at" in err
    assert "Traceback" not in err


def test_role_policy_orders_roles_and_defaults() -> None:
    import os

    uid, gid = os.getuid(), os.getgid()
    assert role_policy(ConsoleSettings())(uid, gid) == "engineer"  # the daemon's own user
    assert role_policy(ConsoleSettings(roles={"viewer": [ME]}))(uid, gid) == "viewer"
    both = ConsoleSettings(roles={"viewer": [ME], "operator": [ME]})
    assert role_policy(both)(uid, gid) == "operator"  # the highest listed role wins
    stranger = role_policy(ConsoleSettings(default_role="operator"))
    assert stranger(65534, 65534) == "operator"
    assert role_policy(ConsoleSettings())(65534, 65534) == "viewer"


async def test_console_says_when_the_daemon_goes_away_and_reconnects(server: Any) -> None:
    api, _, _ = server
    data = ConsoleData()
    bridge = Bridge(api.path, data)
    await bridge.connect()
    app = ConsoleApp(data, bridge)
    poll = asyncio.create_task(app._poll())
    try:
        await api.stop()
        await until(lambda: not data.connected, "the console to notice", interval_s=0.05)
        app.refresh(force=True)
        text = text_of(app)
        assert "DISCONNECTED" in text.splitlines()[0]
        assert "Not connected:" in text and "retrying" in text
        await api.start()
        await until(lambda: data.connected, "the console to reconnect", interval_s=0.05)
        app.refresh(force=True)
        assert "live" in text_of(app).splitlines()[0]
    finally:
        await cancel_and_wait([poll, *app._tasks])
        await bridge.close()
