"""A driver plug-in package adds a protocol through the ``autogrid.drivers`` entry point
alone: `autogrid check` accepts its connection type and template, and the daemon polls
its device from a site.yaml.

The package (tests/plugin_pkg) is installed the way pip installs it for Python to find:
a ``.dist-info`` directory with its ``entry_points.txt`` (generated from the package's
own pyproject.toml) on the path of fresh interpreters. That needs no network, no build
backend and no change to the shared virtual environment, so it runs the same on a fresh
clone in CI; the rest of AutoGrid is not told about the package in any other way.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "tests" / "plugin_pkg"
sys.path.insert(0, str(PKG))  # the simulated device below (not the driver registration)

from autogrid_linebus.device_server import LineBusDevice  # noqa: E402

SITE = """\
site: {{name: Plugin site}}
gateways: [{{id: gw1}}]
templates: [{templates}]
connections:
  - {{id: lb, type: linebus_tcp, host: 127.0.0.1, port: {port}, timeout_s: 2}}
devices:
  - {{id: meter1, nature: meter, role: grid, template: linebus_meter, connection: lb,
     unit_id: 3, poll_interval_s: 0.2}}
historian: {{enabled: false}}
"""


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a Python that has the plug-in package installed."""
    meta = tomllib.loads((PKG / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    site = tmp_path / "site-packages"
    dist = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\n"
                                   f"Version: {meta['version']}\n", encoding="utf-8")
    lines = []
    for group, eps in meta["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in eps.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PKG), str(REPO)])
    yield env


def write_site(tmp_path: Path, port: int) -> Path:
    f = tmp_path / "site.yaml"
    f.write_text(SITE.format(templates=PKG / "templates", port=port), encoding="utf-8")
    return f


def check(site: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from gateway.cli import main; sys.exit(main(['check', sys.argv[1]]))"
    return subprocess.run([sys.executable, "-c", code, str(site)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_accepts_the_plugin_protocol_only_when_installed(
        tmp_path: Path, installed: dict[str, str]) -> None:
    site = write_site(tmp_path, 7070)
    ok = check(site, installed)
    assert (ok.returncode, ok.stderr) == (0, ""), ok.stdout
    assert ok.stdout == f"{site}: OK — 1 device on 1 connection, 1 gateway\n"
    without = dict(installed, PYTHONPATH=str(REPO))
    bad = check(site, without)
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
    assert "connections[0].type: unknown type 'linebus_tcp'" in bad.stdout
    assert "'modbus_tcp'" in bad.stdout  # the known ones are listed


def test_check_applies_the_plugin_connection_checks(tmp_path: Path,
                                                    installed: dict[str, str]) -> None:
    site = write_site(tmp_path, 7070)
    site.write_text(site.read_text().replace("host: 127.0.0.1", "host: 'tcp://x:1'")
                    .replace("template: linebus_meter", "template: meter_3ph"))
    out = check(site, installed).stdout
    assert "connections[0].host: expected a bare host name" in out
    assert "connection 'lb' is linebus_tcp, but template 'meter_3ph' speaks modbus" in out


POLL = textwrap.dedent("""
    import asyncio, json, sys, time
    from pathlib import Path
    from gateway.config.loader import load_config
    from gateway.daemon import Daemon
    from gateway.model import Quality

    async def main() -> None:
        loaded = load_config(sys.argv[1])
        daemon = Daemon(loaded.config, socket_path=Path(sys.argv[2]))
        await daemon.start()
        try:
            dev = daemon.state.devices["meter1"]
            deadline = time.monotonic() + 60
            while dev.health.quality is not Quality.GOOD:
                assert time.monotonic() < deadline, "meter1 never became good"
                await asyncio.sleep(0.05)
            print(json.dumps({"protocol": dev.protocol,
                              "driver": type(daemon.drivers["linebus"]).__module__,
                              "p_kw": dev.value("p_kw"), "f_hz": dev.value("f_hz")}))
        finally:
            await daemon.shutdown()

    asyncio.run(main())
""")


async def test_the_daemon_polls_the_plugin_device_from_a_site_yaml(
        tmp_path: Path, installed: dict[str, str]) -> None:
    device = LineBusDevice({3: {"P_TOT_W": 4250.0, "FREQ": 50.02}})
    port = await device.start()
    try:
        site = write_site(tmp_path, port)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", POLL, str(site), str(tmp_path / "api.sock"), cwd=REPO,
            env=installed, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await device.close()
    assert proc.returncode == 0, err.decode()
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got == {"protocol": "linebus_tcp", "driver": "autogrid_linebus.driver",
                   "p_kw": pytest.approx(4.25), "f_hz": pytest.approx(50.02)}
    assert device.requests >= 1
