"""YAML loading that remembers where every value came from.

Site engineers edit YAML by hand; an error must say ``site.yaml:42:7: devices[3].template:
...``. We compose the YAML node graph ourselves and record the mark of each mapping key
and value by its path, then turn pydantic's ``loc`` tuples back into ``file:line:col``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in a source file, ready to print."""

    file: str
    mark: Mark | None
    path: str  # e.g. devices[3].template
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.mark.line}:{self.mark.col}" if self.mark else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SourceError(Exception):
    """One or more problems in a source file. ``str()`` lists them all, one per line."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Source:
    """Parsed YAML data plus the marks of its keys and values."""

    file: str
    data: Any
    values: dict[PathKey, Mark] = field(default_factory=dict)
    keys: dict[PathKey, Mark] = field(default_factory=dict)

    def mark(self, path: PathKey) -> Mark | None:
        """Best mark for a path: the value itself, else its key, else the nearest parent."""
        p = tuple(path)
        while True:
            if p in self.values:
                return self.values[p]
            if p in self.keys:
                return self.keys[p]
            if not p:
                return None
            p = p[:-1]

    def problem(self, path: PathKey, message: str) -> Problem:
        return Problem(self.file, self.mark(path), format_path(path), message)


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Loader(yaml.SafeLoader):
    pass


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(loader: _Loader, node: yaml.Node, path: PathKey, src: Source) -> Any:
    src.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise SourceError([Problem(src.file, _mark(key_node), format_path(path),
                                           f"mapping key must be a scalar, found {key!r}")])
            key_s = key if isinstance(key, str) else str(key)
            if key_s in out:
                raise SourceError([Problem(src.file, _mark(key_node), format_path(path),
                                           f"duplicate key '{key_s}'")])
            src.keys[(*path, key_s)] = _mark(key_node)
            out[key_s] = _walk(loader, value_node, (*path, key_s), src)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, child, (*path, i), src) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml_text(text: str, file: str) -> Source:
    """Parse YAML text; syntax errors become a SourceError with the position."""
    src = Source(file=file, data=None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        src.data = {} if node is None else _walk(loader, node, (), src)
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        mark = Mark(m.line + 1, m.column + 1) if m is not None else None
        what = " ".join(s for s in (exc.context, exc.problem) if s)
        raise SourceError([Problem(file, mark, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file, None, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    return src


def load_yaml_file(path: str | Path) -> Source:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError([Problem(str(p), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError([Problem(str(p), None, "", f"cannot read file: {exc}")]) from None
    return load_yaml_text(text, str(p))


def _describe_input(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_problems(err: ValidationError, src: Source, prefix: PathKey = ()) -> list[Problem]:
    """Turn pydantic's errors into positioned problems, one per error."""
    out: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = _source_path(src, (*prefix, *e["loc"]))
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"]
            if "input" in e and kind not in ("value_error", "assertion_error"):
                msg += f" (found {_describe_input(e['input'])})"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        mark = src.keys.get(loc) if kind == "extra_forbidden" else src.mark(loc)
        out.append(Problem(src.file, mark or src.mark(loc), format_path(loc), msg))
    return out


def _source_path(src: Source, loc: PathKey) -> PathKey:
    """Drop the parts of a pydantic loc that are not in the file.

    pydantic puts union member and discriminator tags into ``loc`` (``'modbus_tcp'``,
    ``'function-after[...]'``); they name no key the engineer wrote. The last part is kept
    even when absent: it is the missing or unknown key being reported.
    """
    kept: list[str | int] = []
    for i, part in enumerate(loc):
        candidate = (*kept, part)
        if candidate in src.values or candidate in src.keys or i == len(loc) - 1:
            kept.append(part)
    last = tuple(kept)
    if (kept and isinstance(kept[-1], str) and ("[" in kept[-1] or "-" in kept[-1])
            and last not in src.values and last not in src.keys):
        kept.pop()
    return tuple(kept)


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], src: Source, prefix: PathKey = ()) -> M:
    """Validate ``src.data`` as ``model``; all errors at once, positioned, no traceback."""
    try:
        return model.model_validate(src.data, context={"source": src})
    except ValidationError as err:
        raise SourceError(validation_problems(err, src, prefix)) from None
