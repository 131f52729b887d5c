"""Check the rest of a site config when the schema refuses part of it.

pydantic reports every schema error but then gives no config, and the cross-reference
checks (templates, connections, unit ids, control references) need one. So an engineer
does not fix a port only to meet the next error, we set aside what the schema refused --
a list item such as ``devices[3]`` or an optional top-level section -- validate the
remainder and run the cross checks on it. Positions and ``devices[N]`` paths in those
problems are mapped back to the file as written; a problem that names an item set aside
is left out (it may be a consequence of that item's schema error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.config.models import SiteConfig
from gateway.yamlsrc import Mark, PathKey, Problem, Source

LIST_SECTIONS = ("gateways", "connections", "devices")
# Without these no cross check can run, or they would all be wrong (a broken `templates:`
# would make every site template an "unknown template").
REQUIRED_SECTIONS = ("site", "templates")
_INDEXED = re.compile(r"\b(gateways|connections|devices)\[(\d+)\]")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(text: str) -> PathKey:
    """``devices[3].template`` -> ("devices", 3, "template")."""
    return tuple(int(i) if i else k for k, i in _PATH_PART.findall(text))


@dataclass
class Remainder:
    """The part of a config the schema accepted, ready for the cross checks."""

    config: SiteConfig
    source: Source  # same file and positions, list indices renumbered to ``config``
    original: dict[str, list[int]]  # section -> index in config -> index in the file
    set_aside: set[str] = field(default_factory=set)  # ids and section names left out

    def restore(self, problems: list[Problem]) -> list[Problem]:
        """Problems of the remainder as the file numbers them, minus consequences of what
        was set aside."""
        out: list[Problem] = []
        for p in problems:
            if any(f"'{name}'" in p.message for name in self.set_aside):
                continue
            out.append(Problem(p.file, p.mark, _INDEXED.sub(self._renumber, p.path),
                               _INDEXED.sub(self._renumber, p.message)))
        return out

    def _renumber(self, m: re.Match[str]) -> str:
        section, i = m.group(1), int(m.group(2))
        table = self.original.get(section, [])
        return f"{section}[{table[i] if i < len(table) else i}]"


def remainder(src: Source, schema_problems: list[Problem]) -> Remainder | None:
    """The config without the parts ``schema_problems`` point into, or None when what is
    left cannot be checked (a required section is broken, or it still fails)."""
    data = src.data
    if not isinstance(data, dict):
        return None
    drop_items: dict[str, set[int]] = {s: set() for s in LIST_SECTIONS}
    drop_keys: set[str] = set()
    for p in schema_problems:
        path = parse_path(p.path)
        if not path or path[0] in REQUIRED_SECTIONS or path[0] not in data:
            return None  # a missing required section, or the whole file
        head = str(path[0])
        if head in LIST_SECTIONS:
            if len(path) < 2 or not isinstance(path[1], int) \
                    or not isinstance(data[head], list):
                return None  # the section itself is not a list
            drop_items[head].add(path[1])
        else:
            drop_keys.add(head)
    pruned: dict[str, Any] = {k: v for k, v in data.items() if k not in drop_keys}
    original: dict[str, list[int]] = {}
    set_aside = set(drop_keys)
    for section in LIST_SECTIONS:
        items = data.get(section)
        if not isinstance(items, list):
            continue
        keep = [i for i in range(len(items)) if i not in drop_items[section]]
        original[section] = keep
        pruned[section] = [items[i] for i in keep]
        for i in drop_items[section]:
            ident = items[i].get("id") if isinstance(items[i], dict) else None
            if isinstance(ident, str):
                set_aside.add(ident)
    try:
        config = SiteConfig.model_validate(pruned)
    except ValidationError:
        return None
    return Remainder(config, _renumbered(src, pruned, original), original, set_aside)


def _renumbered(src: Source, data: dict[str, Any], original: dict[str, list[int]]) -> Source:
    """``src`` with the positions of kept list items under their new indices."""
    new_of = {s: {old: new for new, old in enumerate(keep)} for s, keep in original.items()}

    def move(table: dict[PathKey, Mark]) -> dict[PathKey, Mark]:
        out: dict[PathKey, Mark] = {}
        for path, mark in table.items():
            if len(path) >= 2 and path[0] in new_of and isinstance(path[1], int):
                new = new_of[str(path[0])].get(path[1])
                if new is None:
                    continue
                path = (path[0], new, *path[2:])
            out[path] = mark
        return out

    return Source(src.file, data, move(src.values), move(src.keys))
