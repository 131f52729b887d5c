"""Commands import what they need: `--help`, `check`, `status`, `console` and a daemon with
analytics off (and no etcd cluster) load no pandas, scikit-learn, scipy, pvlib, matplotlib,
grpc or aetcd.

Each case runs in a fresh interpreter (the test process itself has them all loaded) and
reports the heavy top-level packages found in ``sys.modules`` after the command ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

HEAVY = ("pandas", "sklearn", "scipy", "pvlib", "matplotlib", "grpc", "aetcd")

_CLI = textwrap.dedent("""
    import contextlib, io, json, sys
    from gateway.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(sys.argv[1:])
        except SystemExit:
            pass
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
    print(json.dumps({"heavy": heavy, "output": out.getvalue()}))
""") % (HEAVY,)


def _run(code: str, *args: str, cwd: Path = REPO) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["check", "site_configs/demo.yaml"],
    ["status", "--socket", "{tmp}/nobody.sock"],
    ["console", "--socket", "{tmp}/nobody.sock", "--no-color"],
], ids=["help", "check", "status", "console"])
def test_light_commands_import_no_heavy_packages(argv: list[str], tmp_path: Path) -> None:
    result = _run(_CLI, *(a.format(tmp=tmp_path) for a in argv))
    assert result["output"], "the command printed nothing: it did not run"
    assert result["heavy"] == [], f"`autogrid {' '.join(argv)}` imported {result['heavy']}"


_DAEMON = textwrap.dedent("""
    import asyncio, json, socket, sys
    from pathlib import Path
    from gateway.config.loader import load_config
    from gateway.daemon import Daemon

    tmp = Path(sys.argv[1])
    cfg = load_config("site_configs/demo.yaml").config
    with socket.socket() as s:  # a port nobody serves: the devices are simply offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = cfg.model_copy(update={
        "connections": [c.model_copy(update={"port": port}) for c in cfg.connections],
        "gateways": [g.model_copy(update={"api_socket": tmp / "api.sock"})
                     for g in cfg.gateways],
        "historian": cfg.historian.model_copy(update={"path": tmp / "h.sqlite"}),
        "analytics": {"enabled": %s}, "tariff": None, "scheduler": None})
    cfg = type(cfg).model_validate(cfg.model_dump())

    async def main():
        d = Daemon(cfg)
        await d.start()
        names = sorted(c.name for c in d.components)
        await d.shutdown()
        return names

    components = asyncio.run(main())
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
    print(json.dumps({"heavy": heavy, "components": components}))
""")


def test_daemon_with_analytics_off_imports_no_heavy_packages(tmp_path: Path) -> None:
    result = _run(_DAEMON % ("False", HEAVY), str(tmp_path))
    assert "control" in str(result["components"]), result  # control and historian were on
    assert (tmp_path / "h.sqlite").exists()
    assert result["heavy"] == [], f"the daemon imported {result['heavy']} with analytics off"


def test_help_needs_neither_config_models_nor_an_event_loop() -> None:
    """`autogrid --help` (and a mistyped command) only builds the argument parser: no
    pydantic config models, no asyncio. The cluster's etcd-config defaults once pulled in
    the cluster config models (and with them pydantic), and the CLI module asyncio, for
    0.2 s of a 0.3 s `--help`."""
    code = _CLI.replace(f"set({HEAVY!r})", "{'pydantic', 'asyncio', 'yaml'}")
    assert code != _CLI
    result = _run(code, "--help")
    assert "cluster" in str(result["output"])
    assert result["heavy"] == [], f"`autogrid --help` imported {result['heavy']}"
