"""site_configs/mixed.yaml as shipped: it passes `check`, and in the demo (a simulated
summer late morning) control moves its DNP3 battery and its CAN DC charger."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.test_cli import AUTOGRID, env_for, run, stop

MIXED = str(REPO / "site_configs" / "mixed.yaml")


def test_mixed_site_checks_and_its_dnp3_and_can_devices_are_controlled(tmp_path: Path
                                                                        ) -> None:
    r = run(["check", MIXED], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    proc = subprocess.Popen([*AUTOGRID, "demo", "-c", MIXED], cwd=tmp_path,
                            env=env_for(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    snap: dict[str, Any] = {}
    try:
        sock = tmp_path / "autogrid-gw1.sock"
        deadline = time.monotonic() + 120

        def p_kw(dev: str) -> float:
            v = snap.get("devices", {}).get(dev, {}).get("points", {}).get("p_kw", {})
            return float(v.get("value") or 0.0)

        while time.monotonic() < deadline:
            if sock.exists():
                st = run(["status", "--socket", str(sock), "--json"], tmp_path)
                if st.returncode == 0:
                    snap = json.loads(st.stdout)
                    if p_kw("bess") < -1.0 and p_kw("dc_charger") > 1.0:
                        break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        else:
            raise AssertionError(f"no control seen: bess {p_kw('bess')} kW, dc_charger "
                                 f"{p_kw('dc_charger')} kW")
        assert snap["mode"] == "normal" and snap["site_time"]["simulated"] is True
        assert snap["summary"]["devices"]["good"] == 8
    finally:
        code, _, err = stop(proc, signal.SIGINT, timeout=60)
    assert code == 0, err
    assert "Traceback" not in err
