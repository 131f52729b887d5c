"""Plain-words explanations of YAML syntax errors, for people who edit YAML by hand.

PyYAML says "while parsing a block mapping expected <block end>, but found '<block
mapping start>'" where an engineer needs "line 4 is indented 3 spaces, but the keys
above it are at 4". Almost every such error in a site config is indentation: a line
that lines up with no enclosing block, a list item among keys, or a key under a line
that already has a value (or lacks its ':'). We look at the lines themselves to say
which. Anything we do not recognise keeps PyYAML's words.
"""

from __future__ import annotations

import re

import yaml

_EXPECTED_END = re.compile(r"expected <block end>, but found '(?P<found>[^']*)'")


def explain(exc: yaml.MarkedYAMLError, text: str) -> str | None:
    """A plain description of ``exc`` in ``text``, or None to keep PyYAML's message."""
    mark = exc.problem_mark
    if mark is None:
        return None
    lines = text.splitlines()
    problem = exc.problem or ""
    context = exc.context or ""
    if "mapping values are not allowed" in problem:
        return _value_then_keys(lines, mark.line)
    found = _EXPECTED_END.search(problem)
    if found and context.startswith("while parsing a block"):
        return _misaligned(lines, mark.line, found.group("found"))
    if "quoted scalar" in context and "end of stream" in problem and exc.context_mark:
        start = exc.context_mark
        quote = _line(lines, start.line)[start.column:start.column + 1] or '"'
        return (f"the quoted text that starts at line {start.line + 1}, column "
                f"{start.column + 1} is never closed: add the closing {quote}")
    return None


def _line(lines: list[str], index: int) -> str:
    return lines[index] if 0 <= index < len(lines) else ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _meaningful(line: str) -> bool:
    body = line.strip()
    return bool(body) and not body.startswith("#")


def _show(line: str) -> str:
    body = line.strip()
    return repr(body if len(body) <= 40 else body[:37] + "...")


def _spaces(n: int) -> str:
    return "1 space" if n == 1 else f"{n} spaces"


def _previous(lines: list[str], index: int) -> int | None:
    for i in range(index - 1, -1, -1):
        if _meaningful(lines[i]):
            return i
    return None


def _levels(lines: list[str], index: int) -> list[tuple[int, int, bool]]:
    """The open blocks above line ``index``, innermost first: (indent, line, is_list).

    A list item ``- key: v`` opens two: its keys (dash + 2) and the list (the dash).
    """
    out: list[tuple[int, int, bool]] = []
    limit = 1 << 30
    for i in range(index - 1, -1, -1):
        line = lines[i]
        if not _meaningful(line):
            continue
        ind = _indent(line)
        body = line.lstrip(" ")
        if body.startswith("- ") and ":" in body:
            inner = ind + 2 + _indent(body[2:])
            if inner < limit:
                out.append((inner, i, False))
                limit = inner
        if ind < limit:
            out.append((ind, i, body.startswith("-")))
            limit = ind
        if limit == 0:
            break
    return out


def _misaligned(lines: list[str], index: int, found: str) -> str | None:
    """A line that closes no block and opens none: say how it sits against its parents."""
    line = _line(lines, index)
    if not _meaningful(line):
        return None
    ind = _indent(line)
    levels = _levels(lines, index)
    here = f"line {index + 1} ({_show(line)})"
    same = [lv for lv in levels if lv[0] == ind]
    is_item = line.lstrip(" ").startswith("-") or found in ("-", "<block sequence start>")
    if same and is_item and not same[0][2]:
        _, at, _ = same[0]
        return (f"{here} starts a list item ('- ') at {_spaces(ind)}, among the keys of the "
                f"block at line {at + 1} ({_show(lines[at])}): a block holds either "
                f"'key: value' lines or '- ' items, not both")
    if same and not is_item and same[0][2]:
        _, at, _ = same[0]
        return (f"{here} is a key at {_spaces(ind)}, where line {at + 1} ({_show(lines[at])}) "
                f"starts list items: indent it like the keys of that item "
                f"({_spaces(ind + 2)})")
    inner = [lv for lv in levels if lv[0] > ind]
    outer = [lv for lv in levels if lv[0] < ind]
    parts = []
    if inner:
        lv = inner[-1]
        parts.append(f"line {lv[1] + 1} ({_show(lines[lv[1]])}) is at {_spaces(lv[0])}")
    if outer:
        lv = outer[0]
        parts.append(f"its parent, line {lv[1] + 1} ({_show(lines[lv[1]])}), at "
                     f"{_spaces(lv[0])}")
    if not parts:
        return None
    hint = f"line it up with line {inner[-1][1] + 1}" if inner else "indent it under its parent"
    return (f"{here} is indented {_spaces(ind)}, which lines up with no block above it "
            f"({'; '.join(parts)}): {hint}")


def _value_then_keys(lines: list[str], index: int) -> str | None:
    """A ':' where a value was expected: the line above has a value (or no ':')."""
    line = _line(lines, index)
    prev = _previous(lines, index)
    if prev is None or not _meaningful(line):
        return None
    above = lines[prev]
    here = f"line {index + 1} ({_show(line)})"
    body = above.strip().removeprefix("- ")
    if ":" not in body:
        return (f"line {prev + 1} ({_show(above)}) has no ':' after its key, so {here} is "
                f"read as more of its text; add the ':' (and a space after it)")
    key, _, value = body.partition(":")
    if _indent(line) > _indent(above) and value.strip() and not value.strip().startswith("#"):
        return (f"{here} is indented {_spaces(_indent(line))}, more than line {prev + 1} "
                f"({_show(above)}, {_spaces(_indent(above))}), but '{key.strip()}' already "
                f"has a value: line it up with line {prev + 1}, or remove the value to "
                f"nest keys under '{key.strip()}'")
    return (f"{here} has a ':' where a value was expected; quote a value that contains "
            f"': ' (for example \"a: b\")")
