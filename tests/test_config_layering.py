"""gateway/config depends on nothing above it: importing the schema, loader and checks
loads no feature (control, analytics, console, the simulator), no numpy and no protocol
library; each feature's section is resolved from the feature when a config is first
validated. The console is a pure client: the daemon's side never imports it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ABOVE = ("gateway.control", "gateway.analytics", "gateway.console", "sim_devices", "numpy",
         "gateway.daemon", "pymodbus", "can", "cantools", "dnp3py", "drivers.modbus.driver")


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_the_config_package_loads_nothing_above_it() -> None:
    loaded = run(f"""
        import sys
        import gateway.config
        import gateway.config.checks, gateway.config.loader, gateway.config.models
        import gateway.config.partial, gateway.config.sections
        print(sorted(m for m in {ABOVE!r}
                     if m in sys.modules or any(k.startswith(m + ".") for k in sys.modules)))
    """)
    assert loaded == "[]"


def test_sections_come_from_their_features_when_a_config_is_validated() -> None:
    got = run("""
        import sys
        from gateway.config.loader import load_config
        loaded = load_config("site_configs/demo.yaml")
        cfg = loaded.config
        ev_defaults = next(d.control for d in cfg.devices if d.control)
        print(type(cfg.control).__module__, type(ev_defaults).__module__,
              type(cfg.api).__module__, type(cfg.tariff).__module__,
              type(loaded.simulation).__module__)
    """)
    assert got.split() == ["gateway.control.config", "gateway.control.config",
                           "gateway.apilimits", "gateway.control.scheduler_config",
                           "sim_devices.settings"]


def test_the_daemon_side_never_imports_the_console() -> None:
    loaded = run("""
        import importlib, sys
        from gateway.components import FACTORIES
        import gateway.daemon, gateway.apicomponent, gateway.apipolicy, gateway.apihistory
        for target in FACTORIES:
            importlib.import_module(target.partition(":")[0])
        print(sorted(m for m in sys.modules if m.startswith("gateway.console")))
    """)
    assert loaded == "[]"
