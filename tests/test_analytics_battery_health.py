"""Battery health against the simulated battery's true capacity and resistance.

The telemetry is the simulator's, rounded to the battery template's registers (0.1 % SOC,
0.1 V, 0.1 A, 0.1 kWh counters). The truth comes from the simulator's own pack.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from gateway.analytics.battery_health import assess
from gateway.analytics.inject import simulate
from gateway.config.loader import load_config
from sim_devices.physics.battery import Pack
from sim_devices.settings import BatterySim
from tests.conftest import REPO

DEMO = REPO / "site_configs" / "demo.yaml"
RATED_KWH = 50.0  # the demo battery


@pytest.fixture(scope="module")
def week() -> pd.DataFrame:
    """A week of the demo battery doing self-consumption, its SOH already at 92 %."""
    cfg = load_config(DEMO).config
    sim = dict(cfg.simulation or {})
    devices = dict(sim.get("devices", {}))
    devices["battery"] = {**devices.get("battery", {}), "initial_soh_pct": 92.0}
    cfg = cfg.model_copy(update={"simulation": {**sim, "devices": devices}})
    t0 = datetime(2025, 5, 1, tzinfo=UTC).timestamp()
    tel, _ = simulate(cfg, t0, 7, [], seed=3)
    return tel["battery"]


def truth() -> tuple[float, float]:
    """(capacity kWh, pack resistance ohm) of the simulated battery."""
    pk = Pack(RATED_KWH, 25.0, 25.0, BatterySim(initial_soh_pct=92.0), None)
    return pk.capacity_kwh, pk.n_series * pk.cell_r_ohm


def test_a_week_gives_capacity_and_resistance_within_5_pct_with_an_interval(
        week: pd.DataFrame) -> None:
    cap, r_ohm = truth()
    rep = assess("battery", week.drop(columns=["soh_pct", "capacity_kwh"]), RATED_KWH)
    print(rep.as_dict() | {"capacity_series": len(rep.capacity_series)}, cap, r_ohm)
    assert rep.capacity_kwh is not None and rep.capacity_ci_kwh is not None
    assert abs(rep.capacity_kwh / cap - 1) < 0.05
    assert rep.soh_pct is not None and abs(rep.soh_pct - 92.0) < 4.6
    assert 0 < rep.capacity_ci_kwh < 0.05 * cap
    assert rep.resistance_mohm is not None and rep.resistance_ci_mohm is not None
    assert abs(rep.resistance_mohm / (1000 * r_ohm) - 1) < 0.05
    assert 0 < rep.resistance_ci_mohm < 0.05 * rep.resistance_mohm


def test_the_first_day_says_not_enough_data_instead_of_a_capacity(week: pd.DataFrame) -> None:
    day = week[week.index < week.index[0] + pd.Timedelta(days=1)]
    rep = assess("battery", day, RATED_KWH)
    assert rep.capacity_kwh is None and rep.soh_pct is None
    assert rep.capacity_note.startswith("not enough data: ")


def test_the_same_answer_whatever_the_gateway_clock(week: pd.DataFrame) -> None:
    """The demo's simulator runs 60x faster than the gateway's clock: the historian's
    timestamps are a 60th of the battery's time. Capacity and resistance must not care."""
    fast = week.copy()
    t = pd.DatetimeIndex(fast.index)
    fast.index = t[0] + (t - t[0]) / 60
    a, b = assess("battery", week, RATED_KWH), assess("battery", fast, RATED_KWH)
    assert a.capacity_kwh is not None and a.capacity_kwh == pytest.approx(b.capacity_kwh)
    assert a.resistance_mohm is not None and a.resistance_mohm == pytest.approx(
        b.resistance_mohm)


def test_stable_between_refreshes(week: pd.DataFrame) -> None:
    """Refreshed an hour apart, the estimates move far less than their interval."""
    before = assess("battery", week[week.index < week.index[-1] - pd.Timedelta(hours=1)],
                    RATED_KWH)
    after = assess("battery", week, RATED_KWH)
    assert before.capacity_kwh is not None and after.capacity_kwh is not None
    assert after.capacity_ci_kwh is not None and after.resistance_ci_mohm is not None
    assert abs(after.capacity_kwh - before.capacity_kwh) < after.capacity_ci_kwh / 4
    assert before.resistance_mohm is not None and after.resistance_mohm is not None
    assert abs(after.resistance_mohm - before.resistance_mohm) < after.resistance_ci_mohm / 4
