"""ApiClient: a request it cannot send, or one the daemon could not read, ends in a clear
ApiRequestError at once rather than a wait for a reply that never comes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.apiclient import ApiClient, ApiRequestError


async def test_a_non_finite_number_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    lines: list[bytes] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        lines.append(await r.readline())
        w.close()

    server = await asyncio.start_unix_server(serve, path=str(tmp_path / "s"))
    async with server, ApiClient(tmp_path / "s") as api:
        with pytest.raises(ApiRequestError, match="finite"):
            await api.request("override_set", value=float("nan"), timeout_s=2.0)
    assert lines == [] or lines == [b""]


async def test_an_error_without_an_id_answers_the_request_in_flight(tmp_path: Path) -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.write(json.dumps({"ok": False, "error": "not JSON: bad line"}).encode() + b"\n")
        await w.drain()

    server = await asyncio.start_unix_server(serve, path=str(tmp_path / "s"))
    async with server, ApiClient(tmp_path / "s") as api:
        with pytest.raises(ApiRequestError, match="not JSON"):
            await api.request("ping", timeout_s=2.0)
