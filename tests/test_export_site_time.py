"""`autogrid export` of a simulated site: times on the simulation's clock in the site's
zone, values at the point's resolution, not float noise."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from gateway.export import _rounded, resolutions
from tests.conftest import REPO
from tests.test_cli import run


def test_export_of_the_demo_is_on_the_site_clock_with_clean_values(tmp_path: Path) -> None:
    demo = str(REPO / "site_configs" / "demo.yaml")
    r = run(["demo", "-c", demo, "--duration", "3"], tmp_path, timeout=90)
    assert r.returncode == 0, r.stderr
    r = run(["export", "-c", demo], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows
    # demo.yaml: the simulated day starts 2025-06-21 07:30 in Europe/Berlin, at 60x
    assert all(row["time"].startswith("2025-06-21 07:") and row["time"].endswith("+02:00")
               for row in rows), rows[0]
    noisy = [row["value"] for row in rows if re.search(r"\.\d*(0000|9999)\d$", row["value"])]
    assert not noisy, noisy[:5]
    volts = [row["value"] for row in rows
             if row["device"] == "grid_meter" and row["point"] == "v_v"]
    assert volts


def test_values_round_to_the_template_scale_or_lose_only_float_noise() -> None:
    from gateway.config.loader import load_config

    cfg = load_config(str(REPO / "site_configs" / "demo.yaml")).config
    steps = resolutions(cfg)
    assert steps, "no template point with a fixed resolution"
    step = next(v for v in steps.values() if v < 1)
    assert _rounded(231.10000000000002, step) == 231.1
    assert _rounded(231.1234, 0.1) == 231.1 and _rounded(49.987, 0.01) == 49.99
    assert _rounded(231.10000000000002, None) == 231.1  # no known resolution: noise only
    assert _rounded(0.123456789, None) == 0.123456789  # real digits are kept
