"""SiteState: a value a driver marks Invalid is stored, shown and never usable."""

from __future__ import annotations

from gateway.model import Invalid, Nature, Quality
from gateway.state import DeviceState, SiteState


def _site() -> SiteState:
    s = SiteState()
    s.add_device(DeviceState("bms1", Nature.BMS, max_age_s=10.0))
    return s


def test_invalid_value_is_stored_with_its_reason_and_never_usable() -> None:
    s = _site()
    changed = s.update("bms1", {"soc_pct": Invalid(65535, "all bits set (not available)")},
                       100.0)
    r = changed["soc_pct"]
    assert r.quality is Quality.INVALID and r.value == 65535
    dev = s.devices["bms1"]
    assert dev.value("soc_pct", 100.5) is None
    assert dev.value("soc_pct", 100.5, usable_only=False) == 65535
    snap = s.device_snapshot("bms1", 100.5)
    point = snap["points"]["soc_pct"]  # type: ignore[index]
    assert point["quality"] == "invalid" and "all bits set" in point["invalid"]


def test_a_good_value_after_an_invalid_one_is_announced_and_usable() -> None:
    s = _site()
    s.update("bms1", {"soc_pct": Invalid(250.0, "above the signal's maximum 100")}, 100.0)
    changed = s.update("bms1", {"soc_pct": 55.0}, 101.0)
    assert changed["soc_pct"].quality is Quality.GOOD
    assert s.devices["bms1"].value("soc_pct", 101.5) == 55.0
    assert "soc_pct" not in s.devices["bms1"].invalid


def test_the_same_raw_value_turning_invalid_is_a_change() -> None:
    s = _site()
    s.update("bms1", {"soc_pct": 100.0}, 100.0)
    changed = s.update("bms1", {"soc_pct": Invalid(100.0, "flagged invalid by the device")},
                       101.0)
    assert changed["soc_pct"].quality is Quality.INVALID


def test_recovery_from_offline_keeps_an_invalid_point_invalid() -> None:
    s = _site()
    s.update("bms1", {"soc_pct": Invalid(65535, "all bits set"), "cell_v_max_v": 3.3}, 100.0)
    s.fail("bms1", "timeout", 102.0)
    changed = s.update("bms1", {"cell_v_max_v": 3.3}, 103.0)
    assert changed["cell_v_max_v"].quality is Quality.GOOD
    assert s.devices["bms1"].readings["soc_pct"].quality is Quality.OFFLINE


def test_every_poll_is_announced_to_sample_listeners_changed_or_not() -> None:
    from gateway.model import Nature
    from gateway.state import DeviceState, SiteState
    state = SiteState()
    state.add_device(DeviceState("m", Nature.METER, 10.0))
    changes: list[dict[str, object]] = []
    samples: list[dict[str, object]] = []
    state.on_change(lambda d, ch: changes.append({p: r.value for p, r in ch.items()}))
    state.on_sample(lambda d, s: samples.append({p: (r.value, r.ts) for p, r in s.items()}))
    state.update("m", {"i_l1_a": 70.0}, 1.0)
    state.update("m", {"i_l1_a": 70.0}, 2.0)
    assert changes == [{"i_l1_a": 70.0}]
    assert samples == [{"i_l1_a": (70.0, 1.0)}, {"i_l1_a": (70.0, 2.0)}]
