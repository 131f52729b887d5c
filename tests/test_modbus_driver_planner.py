"""The read planner: how many Modbus requests a template costs, and which addresses they touch."""

from __future__ import annotations

from drivers.modbus.device import poll_items, readable_fillers
from drivers.modbus.planner import Block, Item, plan_reads, split_block
from drivers.template import Function, ModbusTemplate

H, IN, C, D = Function.HOLDING, Function.INPUT, Function.COIL, Function.DISCRETE


def items(function: Function, *spans: tuple[int, int]) -> list[Item]:
    return [Item(f"p{function}{a}", function, a, w) for a, w in spans]


def addresses(blocks: list[Block]) -> list[tuple[str, int, int]]:
    return [(str(b.function), b.address, b.count) for b in blocks]


def test_contiguous_registers_become_one_request() -> None:
    blocks = plan_reads(items(H, (0, 2), (2, 1), (3, 2), (5, 1)))
    assert addresses(blocks) == [("holding", 0, 6)]
    assert [i.address for i in blocks[0].items] == [0, 2, 3, 5]


def test_gap_is_not_bridged_by_default() -> None:
    blocks = plan_reads(items(H, (0, 1), (2, 1), (10, 2)))
    assert addresses(blocks) == [("holding", 0, 1), ("holding", 2, 1), ("holding", 10, 2)]


def test_small_gap_bridged_when_allowed_large_gap_not() -> None:
    spans = items(H, (0, 1), (2, 1), (10, 2), (30, 1))
    blocks = plan_reads(spans, max_gap=8)
    # 1 undeclared register between 0 and 2, 7 between 3 and 10: bridged; 18 before 30: not
    assert addresses(blocks) == [("holding", 0, 12), ("holding", 30, 1)]


def test_declared_constants_are_not_a_gap() -> None:
    spans = items(H, (0, 2), (6, 1))
    assert len(plan_reads(spans)) == 2
    blocks = plan_reads(spans, fillers=frozenset({2, 3, 4, 5}))
    assert addresses(blocks) == [("holding", 0, 7)]
    # constants are holding registers: they do not bridge input registers
    assert len(plan_reads(items(IN, (0, 2), (6, 1)), fillers=frozenset({2, 3, 4, 5}))) == 2


def test_span_over_125_registers_is_split() -> None:
    spans = items(H, *[(a, 2) for a in range(0, 300, 2)])  # 300 contiguous registers
    blocks = plan_reads(spans)
    assert addresses(blocks) == [("holding", 0, 124), ("holding", 124, 124),
                                 ("holding", 248, 52)]
    # a 32-bit point is never cut in half across two requests
    assert all(b.count % 2 == 0 for b in blocks)


def test_template_limit_is_respected() -> None:
    blocks = plan_reads(items(H, *[(a, 1) for a in range(50)]), max_registers=20)
    assert addresses(blocks) == [("holding", 0, 20), ("holding", 20, 20), ("holding", 40, 10)]


def test_functions_are_never_mixed_and_bits_coalesce_to_2000() -> None:
    spans = (items(H, (0, 1), (1, 1)) + items(IN, (0, 1), (1, 1)) + items(C, (0, 1), (5, 1))
             + items(D, *[(a, 1) for a in range(2500)]))
    blocks = plan_reads(spans, max_gap=8)
    assert addresses(blocks) == [("holding", 0, 2), ("input", 0, 2), ("coil", 0, 6),
                                 ("discrete", 0, 2000), ("discrete", 2000, 500)]


def test_split_drops_bridged_gaps_then_splits_items() -> None:
    blk = plan_reads(items(H, (0, 2), (2, 1), (6, 1)), max_gap=8)[0]
    assert (blk.address, blk.count) == (0, 7)
    runs = split_block(blk)
    assert addresses(runs) == [("holding", 0, 3), ("holding", 6, 1)]
    assert addresses(split_block(runs[0])) == [("holding", 0, 2), ("holding", 2, 1)]
    single = split_block(runs[1])
    assert single == [runs[1]]


def test_scale_factor_registers_join_the_plan() -> None:
    tpl = ModbusTemplate(nature="pv_inverter", points={
        "p_kw": {"address": 40083, "type": "int16", "scale_factor": 40084, "scale": 0.001},
        "f_hz": {"address": 40085, "type": "uint16", "scale_factor": 40086},
        "v_v": {"address": 40079, "type": "uint16", "scale_factor": 40082},
    })
    blocks = plan_reads(poll_items(tpl, list(tpl.points)), max_gap=0)
    # 40079 alone (40080-81 undeclared), then 40082..40086 with the three sf registers
    assert addresses(blocks) == [("holding", 40079, 1), ("holding", 40082, 5)]
    keys = {i.key for b in blocks for i in b.items}
    assert keys == {"p_kw", "f_hz", "v_v", "sf@40084", "sf@40086", "sf@40082"}


def test_sunspec_map_is_read_whole_because_every_register_of_it_exists() -> None:
    points = {
        "p_kw": {"address": 40084, "type": "int16", "scale_factor": 40085},
        "e_total_kwh": {"address": 40094, "type": "uint32", "scale_factor": 40096},
        "state": {"address": 40108, "type": "uint16", "enum": {4: "mppt"}},
        "dc_p_kw": {"address": 5, "function": "input", "type": "int16"},
    }
    plain = ModbusTemplate(nature="pv_inverter", points=points)
    sunspec = ModbusTemplate(nature="pv_inverter", sunspec=True, points=points)
    names = list(points)
    assert readable_fillers(plain, poll_items(plain, names)) == frozenset()
    fill = readable_fillers(sunspec, poll_items(sunspec, names))
    assert min(fill) == 40000 and max(fill) == 40108
    assert addresses(plan_reads(poll_items(sunspec, names), fillers=fill)) == [
        ("holding", 40084, 25), ("input", 5, 1)]
    assert len(plan_reads(poll_items(plain, names))) == 4
