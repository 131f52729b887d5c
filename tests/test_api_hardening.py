"""The API under hostile or broken clients: bad lines get a one-line JSON error and the
connection stays usable; replies are always strict JSON; connections are capped (per uid,
in total, with a reserve for operators) and idle ones are closed."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api import ApiServer, Caller
from gateway.apilimits import ApiSettings
from gateway.apiwire import MAX_DEPTH, MAX_LINE
from gateway.state import SiteState
from tests.conftest import REPO
from tests.waiting import WAIT_S, until

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def strict(line: bytes) -> dict[str, Any]:
    """Parse a reply as a strict JSON parser would (no NaN/Infinity)."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"the reply carries {name}, which is not JSON: {line!r}")
    msg = json.loads(line, parse_constant=refuse)
    assert isinstance(msg, dict), line
    return msg


async def connect(sock: Path) -> Conn:
    return await asyncio.open_unix_connection(str(sock), limit=4 * MAX_LINE)


async def ask(conn: Conn, raw: bytes) -> dict[str, Any]:
    r, w = conn
    w.write(raw + b"\n")
    await w.drain()
    line = await asyncio.wait_for(r.readline(), WAIT_S)
    assert line.endswith(b"\n"), f"no reply to {raw[:80]!r} (connection closed?)"
    return strict(line)


async def close(conn: Conn) -> None:
    conn[1].close()
    await conn[1].wait_closed()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    api = ApiServer(SiteState(), tmp_path / "api.sock", "gw1")
    api.register("nan", lambda r, c: {"v": math.nan, "w": [math.inf, 1.5]}, help="bad floats")
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


BAD_LINES = [
    (b'{"id": 1, "cmd": "device", "device": ["pv"]}', "unknown device ['pv']"),
    (b'{"id": 2, "cmd": "subscribe", "interval_s": "fast"}', "'interval_s' must be a number"),
    (b"[" * 5000 + b"]" * 5000, f"nested deeper than {MAX_DEPTH} levels"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, f"nested deeper than {MAX_DEPTH} levels"),
    (b'\xff\xfe{"cmd": "ping"}', "not valid UTF-8 (at byte offset 0)"),
    (b'{"cmd": "ping", "name": "caf\xe9"}', "not valid UTF-8 (at byte offset 28)"),
    (b'{"id": ' + b"9" * 5000 + b', "cmd": "ping"}', "not valid JSON: Exceeds the limit"),
    (b'{"id": "' + b"x" * 5000 + b'", "cmd": "ping"}', "'id' must be an integer or a string"),
    (b'{"id": {"a": 1}, "cmd": "ping"}', "'id' must be an integer or a string"),
    (b'{"id": NaN, "cmd": "ping"}', "NaN is not a JSON number"),
    (b'{"cmd": "ping", "x": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"cmd": "ping", "x": 1e400}', "number 1e400 is out of range"),
    (b'{"cmd": "ping"', "not valid JSON: Expecting"),
    (b'"ping"', "a request is a JSON object"),
]


@pytest.mark.parametrize(("raw", "error"), BAD_LINES, ids=[e for _, e in BAD_LINES])
async def test_a_bad_line_gets_a_one_line_error_and_the_connection_stays_usable(
        server: ApiServer, raw: bytes, error: str, caplog: pytest.LogCaptureFixture) -> None:
    conn = await connect(server.path)
    try:
        with caplog.at_level(logging.DEBUG - 1):
            reply = await ask(conn, raw)
            assert reply["ok"] is False and error in reply["error"], reply
            assert "\n" not in reply["error"]
            again = await ask(conn, b'{"id": 7, "cmd": "ping"}')
            assert again["ok"] and again["id"] == 7 and again["result"]["gateway"] == "gw1"
    finally:
        await close(conn)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_replies_are_strict_json_even_with_non_finite_numbers(server: ApiServer) -> None:
    conn = await connect(server.path)
    try:
        reply = await ask(conn, b'{"id": 3, "cmd": "nan"}')
    finally:
        await close(conn)
    assert reply["ok"] and reply["result"] == {"v": None, "w": [None, 1.5]}
    assert reply["warning"] == "2 non-finite number(s) (NaN/Infinity) replaced by null"


async def test_a_handler_crash_is_a_one_line_error_not_a_closed_connection(
        server: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    def broken(req: dict[str, Any], caller: Caller) -> Any:
        return {}[req.get("key")]

    server.register("broken", broken, help="raises KeyError")
    conn = await connect(server.path)
    try:
        reply = await ask(conn, b'{"id": 4, "cmd": "broken", "key": "x"}')
        assert reply == {"id": 4, "ok": False, "error": "'broken' failed: internal error: "
                         "KeyError: 'x' (the request was not carried out)"}
        assert (await ask(conn, b'{"cmd": "ping"}'))["ok"]
    finally:
        await close(conn)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_an_over_long_line_gets_the_error_then_a_clean_close(server: ApiServer) -> None:
    r, w = await connect(server.path)
    try:
        w.write(b'{"cmd": "ping", "pad": "' + b"x" * (MAX_LINE + 100) + b'"}\n')
        await w.drain()
        reply = strict(await asyncio.wait_for(r.readline(), WAIT_S))
        assert reply == {"id": None, "ok": False,
                         "error": f"request longer than {MAX_LINE} bytes; closing"}
        assert await asyncio.wait_for(r.read(), WAIT_S) == b""
    finally:
        w.close()


# -- connection limits ------------------------------------------------------------------


async def limited(tmp_path: Path, **limits: Any) -> ApiServer:
    api = ApiServer(SiteState(), tmp_path / "api.sock", "gw1",
                    settings=ApiSettings(**limits))
    api.register("estop", lambda r, c: {"stopped_by": c.user}, role="operator",
                 help="stand-in for the emergency stop")
    await api.start()
    return api


async def open_idle(api: ApiServer, n: int) -> list[Conn]:
    """``n`` connections that send nothing, each counted by the server before returning."""
    conns = []
    for _ in range(n):
        before = api.limiter.total
        conns.append(await connect(api.path))
        await until(lambda b=before: api.limiter.total > b, "the connection to be admitted")
    return conns


async def refused_with(api: ApiServer) -> str:
    """Connect once more: the server must answer at once (no request needed) and close."""
    r, w = await connect(api.path)
    try:
        reply = strict(await asyncio.wait_for(r.readline(), WAIT_S))
        assert await asyncio.wait_for(r.read(), WAIT_S) == b""
    finally:
        w.close()
    assert reply["ok"] is False and reply["id"] is None
    return str(reply["error"])


async def test_one_uid_cannot_take_every_connection(tmp_path: Path) -> None:
    api = await limited(tmp_path, max_connections=40, max_connections_per_uid=5,
                        reserved_for_operators=2)
    conns: list[Conn] = []
    try:
        conns = await open_idle(api, 5)
        why = await refused_with(api)
        assert why == (f"too many connections from uid {os.getuid()} (5 open, limit 5); "
                       "close some and try again")
        await close(conns.pop())
        await until(lambda: api.limiter.total == 4, "the freed slot")
        conn = await connect(api.path)  # a freed slot is usable again
        conns.append(conn)
        assert (await ask(conn, b'{"cmd": "estop"}'))["ok"]
    finally:
        for c in conns:
            await close(c)
        await api.stop()


async def test_the_last_slots_are_kept_for_an_operator(tmp_path: Path) -> None:
    api = await limited(tmp_path, max_connections=8, max_connections_per_uid=100,
                        reserved_for_operators=3)
    conns: list[Conn] = []
    try:
        api.role_of = lambda uid, gid: "viewer"
        conns = await open_idle(api, 5)
        assert await refused_with(api) == ("too many connections (5 open; the last 3 are kept "
                                           "for operators); try again later")
        api.role_of = lambda uid, gid: "operator"
        conn = await connect(api.path)
        conns.append(conn)
        reply = await ask(conn, b'{"id": 1, "cmd": "estop"}')
        assert reply["ok"], reply
        conns += await open_idle(api, 2)
        assert await refused_with(api) == "too many connections (8 open, limit 8); try " \
                                          "again later"
    finally:
        for c in conns:
            await close(c)
        await api.stop()


async def test_an_idle_connection_is_closed_with_a_reason(tmp_path: Path) -> None:
    api = await limited(tmp_path, idle_timeout_s=0.2)
    try:
        r, w = await connect(api.path)
        reply = strict(await asyncio.wait_for(r.readline(), WAIT_S))
        assert reply == {"id": None, "ok": False, "error": "no request for 0.2 s; closing"}
        assert await asyncio.wait_for(r.read(), WAIT_S) == b""
        w.close()
        await until(lambda: api.limiter.total == 0, "the slot to be freed")
    finally:
        await api.stop()


FLOOD = """
import socket, sys, time
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    socks.append(s)
print("open", flush=True)
sys.stdin.readline()
"""


# The flooding user runs the system's Python: it may not be allowed into the virtualenv.
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as a second uid needs root")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"no {SYSTEM_PYTHON}")
async def test_another_uids_flood_leaves_root_its_emergency_stop() -> None:
    """The scenario of the review: a local user opens more idle connections than allowed;
    it gets a clear refusal and root can still stop the site."""
    tmp = Path(tempfile.mkdtemp(prefix="autogrid-flood-"))  # reachable by uid 65534
    os.chmod(tmp, 0o755)
    api = await limited(tmp, max_connections=20, max_connections_per_uid=6,
                        reserved_for_operators=4)
    flood = None
    try:
        os.chmod(api.path, 0o666)
        flood = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, "-c", FLOOD, str(api.path), "6", user=65534, group=65534,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert flood.stdout is not None
        assert await asyncio.wait_for(flood.stdout.readline(), WAIT_S) == b"open\n"
        await until(lambda: api.limiter.by_uid[65534] == 6, "the flood to be admitted")
        extra = await asyncio.to_thread(  # the server answers on this loop meanwhile
            subprocess.run, [SYSTEM_PYTHON, "-c", FLOOD.replace(
                "print(", "print(s.recv(4096).decode(), "), str(api.path), "1"],
            user=65534, group=65534, input="\n", capture_output=True, text=True,
            timeout=WAIT_S)
        assert "too many connections from uid 65534 (6 open, limit 6)" in extra.stdout
        conn = await connect(api.path)  # root: engineer by default
        try:
            reply = await ask(conn, b'{"id": 9, "cmd": "estop"}')
        finally:
            await close(conn)
        assert reply["ok"] and reply["result"] == {"stopped_by": "root"}
    finally:
        if flood is not None:
            await asyncio.wait_for(flood.communicate(b"\n"), WAIT_S)
        await api.stop()
        shutil.rmtree(tmp)


EMFILE_SERVER = """
import asyncio, logging, resource, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from gateway.api import ApiServer
from gateway.state import SiteState

async def main():
    api = ApiServer(SiteState(), Path(sys.argv[1]), "gw1")
    await api.start()
    import os
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 4, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1]))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await api.stop()

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
asyncio.run(main())
"""


async def test_running_out_of_descriptors_is_logged_once_and_recovers(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    repo = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", EMFILE_SERVER, str(sock), repo, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    conns: list[Conn] = []
    err = b""
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), WAIT_S) == b"ready\n"
        for _ in range(12):  # more than the 4 descriptors left: accept fails with EMFILE
            conns.append(await connect(sock))
        while b"cannot accept connections" not in err:
            err += await asyncio.wait_for(proc.stderr.readline(), WAIT_S)
        for c in conns:
            await close(c)
        conns = []
        while b"accepting connections again" not in err:
            err += await asyncio.wait_for(proc.stderr.readline(), WAIT_S)
        conn = await connect(sock)
        try:
            assert (await ask(conn, b'{"cmd": "ping"}'))["ok"]
        finally:
            await close(conn)
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        _, more = await asyncio.wait_for(proc.communicate(), WAIT_S)
        err += more
    finally:
        for c in conns:
            await close(c)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 0, text
    assert text.count("cannot accept connections") == 1, text
    assert "Too many open files" in text and "Traceback" not in text, text
