"""The audit log: every refusal is recorded (role, token, crash), rows are bounded, old rows
are pruned periodically, queries are paged, and token guessing is slowed to a lockout."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.api import ApiServer, Caller
from gateway.apiclient import ApiClient, ApiRequestError
from gateway.apilimits import ApiSettings
from gateway.apipolicy import ConsoleSettings, token_policy
from gateway.config.models import SiteConfig
from gateway.control.alarms import MAX_DETAIL_BYTES, MAX_FIELD_CHARS, MAX_PAGE, ControlStore
from gateway.daemon import Daemon
from gateway.state import SiteState

TOKEN = "the-right-token"


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as con:
        return list(con.execute(sql))


def test_stored_rows_are_bounded_and_say_they_were_cut(tmp_path: Path) -> None:
    db = tmp_path / "control.sqlite"
    store = ControlStore(db)
    store.open()
    try:
        for _ in range(50):  # the review's padded requests: 1 MB each
            store.audit("u" * 10_000, "override_set",
                        {"pad": "x" * 1_000_000, "many": list(range(10_000)),
                         "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}}},
                        ok=False, reason="r" * 10_000)
        entry = store.audit_log(limit=1)[0]
    finally:
        store.close()
    longest = rows(db, "SELECT MAX(LENGTH(detail)), MAX(LENGTH(user)), MAX(LENGTH(reason)) "
                       "FROM audit")[0]
    assert longest[0] <= MAX_DETAIL_BYTES
    assert longest[1] < MAX_FIELD_CHARS + 40 and longest[2] < MAX_FIELD_CHARS + 40
    assert entry["user"].endswith(f"... ({10_000 - MAX_FIELD_CHARS} more characters)")
    detail = entry["detail"]
    assert detail["_truncated"] == "long strings, 9968 list items, deep nesting"
    assert detail["pad"].startswith("xxx") and len(detail["pad"]) < MAX_FIELD_CHARS + 40
    assert len(detail["many"]) == 32
    assert db.stat().st_size < 2_000_000  # 50 MB of requests, not stored whole
    assert db.stat().st_mode & 0o777 == 0o640  # audit rows are not for every local user


def test_a_detail_too_big_even_when_cut_is_replaced_by_a_note(tmp_path: Path) -> None:
    store = ControlStore(None)
    store.audit("bob", "strategy_set", {f"k{i}": {f"j{j}": "y" * 200 for j in range(32)}
                                        for i in range(32)})
    detail = store.audit_log()[0]["detail"]
    assert detail["_truncated"].startswith("detail of ")
    assert detail["_truncated"].endswith(f"bytes not stored (limit {MAX_DETAIL_BYTES})")
    assert detail["keys"][:2] == ["k0", "k1"]


def test_retention_by_age_and_count_runs_periodically(tmp_path: Path) -> None:
    clock = Clock()
    db = tmp_path / "control.sqlite"
    store = ControlStore(db, retention_days=1.0, max_rows=100, clock=clock)
    store.open()
    try:
        store.audit("old", "mode", {})
        clock.t += 2 * 86400  # two days later: the first row is past retention
        for i in range(150):
            store.audit("alice", "shed", {"i": i})
            clock.t += 0.1  # 15 s in all: within one prune period
        # pruned on the first insert after two days (the period had passed), not since
        count, oldest_user = rows(db, "SELECT COUNT(*), MIN(user) FROM audit")[0]
        assert count == 150 and oldest_user == "alice"
        clock.t += 61
        store.audit("alice", "shed", {"i": 150})  # a period later: pruned to the cap
        assert rows(db, "SELECT COUNT(*) FROM audit")[0][0] == 100
        newest = store.audit_log(limit=1)[0]
        assert newest["detail"] == {"i": 150}
    finally:
        store.close()


def test_the_audit_query_is_paged(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.sqlite")
    store.open()
    try:
        for i in range(1200):
            store.audit("alice", "shed", {"i": i})
        first = store.audit_log(limit=10_000)
        assert len(first) == MAX_PAGE
        seen = [e["detail"]["i"] for e in first]
        while True:
            page = store.audit_log(limit=MAX_PAGE, before=first[-1]["id"])
            if not page:
                break
            seen += [e["detail"]["i"] for e in page]
            first = page
        assert seen == list(range(1199, -1, -1))
    finally:
        store.close()


@pytest.fixture
async def audited_api(tmp_path: Path) -> Any:
    clock = Clock()
    store = ControlStore(tmp_path / "control.sqlite")
    store.open()
    api = ApiServer(SiteState(), tmp_path / "api.sock", "gw1", clock=clock,
                    settings=ApiSettings(token_failures=3, token_window_s=60,
                                         token_lockout_s=300))
    api.audit_sink = store.audit
    api.token_caller = token_policy(ConsoleSettings.model_validate({"tokens": [
        {"name": "night", "role": "operator",
         "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]}))

    def crash(req: dict[str, Any], caller: Caller) -> Any:
        raise ZeroDivisionError("division by zero")

    api.register("estop", lambda r, c: {"by": c.user}, role="operator", help="stop")
    api.register("crash", crash, role="viewer", help="a handler bug")
    await api.start()
    try:
        yield api, store, clock
    finally:
        await api.stop()
        store.close()


async def refused(client: ApiClient, cmd: str, **kw: Any) -> str:
    with pytest.raises(ApiRequestError) as info:
        await client.request(cmd, **kw)
    return str(info.value)


async def test_every_refusal_is_audited_with_who_what_and_why(audited_api: Any) -> None:
    api, store, _ = audited_api
    api.role_of = lambda uid, gid: "viewer"
    async with ApiClient(api.path) as c:
        assert "needs the operator role" in await refused(c, "estop", reason="drill")
        assert "the token is not valid" in await refused(c, "estop", token="guess")
        assert "internal error: ZeroDivisionError" in await refused(c, "crash", x=1)
        assert (await c.request("estop", token=TOKEN))["by"].startswith("night (token")
    log = store.audit_log()
    refusals = [(e["action"], e["detail"], e["reason"]) for e in log if not e["ok"]]
    me = log[0]["user"]
    assert refusals == [
        ("crash", {"x": 1}, "internal error: ZeroDivisionError: division by zero"),
        ("estop", {}, "bad token: the token is not valid for this gateway"),
        ("estop", {"reason": "drill"}, f"'estop' needs the operator role; {me} is viewer"),
    ]
    assert "guess" not in json.dumps(log) and TOKEN not in json.dumps(log)


async def test_token_guessing_is_locked_out_logged_once_and_audited(
        audited_api: Any, caplog: pytest.LogCaptureFixture) -> None:
    api, store, clock = audited_api
    async with ApiClient(api.path) as c:
        with caplog.at_level(logging.INFO, logger="autogrid.api"):
            for guess in ("a", "b", "c"):
                assert "not valid" in await refused(c, "ping", token=guess)
            for _ in range(5):  # even the right token is refused during the lockout
                assert "too many bad tokens" in await refused(c, "ping", token=TOKEN)
        lockouts = [r for r in caplog.records if "token attempts from" in r.getMessage()]
        assert len(lockouts) == 1
        assert (await c.request("ping"))["gateway"] == "gw1"  # no token: still served
        clock.t += 301
        assert (await c.request("ping", token=TOKEN))["role"] == "operator"
    actions = [e["action"] for e in store.audit_log() if not e["ok"]]
    assert actions.count("token_lockout") == 1 and actions.count("ping") == 3


def control_site(tmp: Path) -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "audit"}, "gateways": [{"id": "gw1", "api_socket": str(tmp / "s")}],
        "historian": {"path": str(tmp / "h.sqlite")}, "control": {}})


async def test_the_daemons_audit_command_pages_and_records_refusals(tmp_path: Path) -> None:
    daemon = Daemon(control_site(tmp_path))
    await daemon.start()
    try:
        assert daemon.api is not None
        daemon.api.role_of = lambda uid, gid: "viewer"
        async with ApiClient(daemon.socket_path) as c:
            why = await refused(c, "emergency_stop", reason="p" * 50_000)
            assert "needs the operator role" in why
            assert f"'limit' must be a number from 1 to {MAX_PAGE}" in await refused(
                c, "audit", limit=2000)
            assert "'before' must be an audit entry id" in await refused(c, "audit",
                                                                        before="x")
            newest = await c.request("audit", limit=1)
            assert newest[0]["action"] == "emergency_stop" and newest[0]["ok"] is False
            assert newest[0]["detail"]["_truncated"] == "long strings"
            older = await c.request("audit", before=newest[0]["id"])
            assert [e["action"] for e in older] == ["control_start"]
    finally:
        await daemon.shutdown()
