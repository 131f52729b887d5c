"""Read planning: coalesce a template's registers into as few Modbus requests as allowed.

A plan is computed once when a device attaches. Registers of one function that are
adjacent are read together, up to the protocol limit (125 registers, 2000 bits) and the
template's ``max_registers_per_read``. Gaps of addresses the template does not declare
are bridged only when ``max_gap`` allows it (default 0: some devices answer ILLEGAL
DATA ADDRESS for any undeclared register), except gaps made of the template's declared
``constants`` (SunSpec strings, scale factors), which exist on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.template import Function

MAX_REGISTERS = 125  # Modbus limit for FC3/FC4
MAX_BITS = 2000  # Modbus limit for FC1/FC2


@dataclass(frozen=True, slots=True)
class Item:
    """Something to read: a point's registers or a SunSpec scale-factor register."""

    key: str  # point name, or "sf@<address>"
    function: Function
    address: int
    width: int

    @property
    def end(self) -> int:
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class Block:
    """One Modbus read request covering one or more items."""

    function: Function
    address: int
    count: int
    items: tuple[Item, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    def runs(self) -> list[tuple[int, int]]:
        """Maximal (start, end) address ranges covered by the items themselves."""
        out: list[tuple[int, int]] = []
        for it in sorted(self.items, key=lambda i: i.address):
            if out and it.address <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], it.end))
            else:
                out.append((it.address, it.end))
        return out

    def describe(self) -> str:
        return f"{self.function} {self.address}+{self.count}"


def sf_key(address: int) -> str:
    return f"sf@{address}"


def _limit(function: Function, max_registers: int) -> int:
    return MAX_BITS if function.is_bit else min(MAX_REGISTERS, max_registers)


def plan_reads(items: Iterable[Item], *, max_registers: int = MAX_REGISTERS, max_gap: int = 0,
               fillers: frozenset[int] = frozenset()) -> list[Block]:
    """Group items into blocks (sorted by function, then address).

    ``max_gap``: how many undeclared addresses one bridge may read. ``fillers``: holding
    register addresses known to exist (template constants); they never count as a gap.
    """
    by_function: dict[Function, list[Item]] = {}
    for it in items:
        by_function.setdefault(it.function, []).append(it)
    blocks: list[Block] = []
    for function in Function:
        group = sorted(by_function.get(function, []), key=lambda i: (i.address, i.width))
        limit = _limit(function, max_registers)
        fill = fillers if function is Function.HOLDING else frozenset()
        current: list[Item] = []
        start = end = 0
        for it in group:
            if current and _joinable(start, end, it, limit, max_gap, fill):
                current.append(it)
                end = max(end, it.end)
                continue
            if current:
                blocks.append(Block(function, start, end - start, tuple(current)))
            current, start, end = [it], it.address, it.end
        if current:
            blocks.append(Block(function, start, end - start, tuple(current)))
    return blocks


def _joinable(start: int, end: int, it: Item, limit: int, max_gap: int,
              fill: frozenset[int]) -> bool:
    if max(end, it.end) - start > limit:
        return False
    if it.address <= end:
        return True
    undeclared = sum(1 for a in range(end, it.address) if a not in fill)
    return undeclared <= max_gap


def split_block(block: Block) -> list[Block]:
    """Smaller blocks reading only declared addresses; [block] when it cannot be split.

    First split: one block per run of adjacent items (drops bridged gaps). A block that is
    already one run splits into its items.
    """
    runs = block.runs()
    if len(runs) > 1:
        parts: list[Block] = []
        for lo, hi in runs:
            inside = tuple(i for i in block.items if lo <= i.address < hi)
            parts.append(Block(block.function, lo, hi - lo, inside))
        return parts
    distinct = sorted({(i.address, i.width) for i in block.items})
    if len(distinct) <= 1:
        return [block]
    return [Block(block.function, a, w,
                  tuple(i for i in block.items if (i.address, i.width) == (a, w)))
            for a, w in distinct]
