"""What strategies hand each other within a cycle is typed and checked: each handoff field
has a writer that runs before its readers, so no reader depends on an order by luck."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.control.config import Strategies
from gateway.control.context import Handoff, Site
from gateway.control.strategies import (
    EvCharging,
    PeakShaving,
    PlanTracking,
    SelfConsumption,
    TimeOfUse,
    check_handoffs,
    pipeline,
)


def test_the_shipped_pipeline_hands_every_field_forward() -> None:
    strategies = pipeline(Strategies())
    fields = {f.name for f in dataclasses.fields(Handoff)}
    written = {f for s in strategies for f in getattr(s, "writes", ())}
    read = {f for s in strategies for f in getattr(s, "reads", ())}
    assert written == read == fields  # every field has a writer and a reader


ST = Strategies()


@pytest.mark.parametrize(("order", "message"), [
    ([TimeOfUse(ST.time_of_use), SelfConsumption(ST.self_consumption),
      PlanTracking(ST.plan_tracking), PeakShaving(ST.peak_shaving), EvCharging(ST.ev_charging)],
     "strategy 'peak_shaving' reads handoff 'ev_must_kw' before 'ev_charging' writes it"),
    ([SelfConsumption(ST.self_consumption), TimeOfUse(ST.time_of_use)],
     "strategy 'self_consumption' reads handoff 'tou_cheap' before 'time_of_use' writes it"),
    ([EvCharging(ST.ev_charging)], "strategy 'ev_charging' reads handoff 'plan_ev_kw' before "
                                   "anything writes it"),
])
def test_a_reader_before_its_writer_is_refused(order: list[object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_handoffs(order)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_every_cycle_starts_with_an_empty_handoff() -> None:
    a = Site(now=0.0, grid_kw=None, import_limit_kw=None, export_limit_kw=None)
    a.handoff.ev_must_kw["ev1"] = 7.0
    a.handoff.tou_cheap = True
    b = Site(now=1.0, grid_kw=None, import_limit_kw=None, export_limit_kw=None,
             memory=a.memory)
    assert b.handoff == Handoff() and b.memory is a.memory
