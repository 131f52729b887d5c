"""YAML loading that remembers where every value came from.

Site engineers edit YAML by hand; an error must say ``site.yaml:42:7: devices[3].template:
...``. We compose the YAML node graph ourselves and record the mark of each mapping key
and value by its path, then turn pydantic's ``loc`` tuples back into ``file:line:col``.

Aliases are shared nodes: a few of them nested ("billion laughs") expand to billions of
values. Reading is bounded: at most MAX_FILE_BYTES of text, MAX_ALIASES alias uses and
MAX_NODES values once aliases are expanded; past a limit the error says where (the alias
that expands too far). Merge keys (``<<: *base``) need no limit of their own: PyYAML keeps
each merged key once, so they cannot multiply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.yamlhint import explain

PathKey = tuple[str | int, ...]

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_ALIASES = 1000  # alias uses (*name) in one file
MAX_NODES = 200_000  # values in one file once aliases are expanded


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
    """SafeLoader that counts alias uses and remembers where each was written."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.alias_uses = 0
        # (id(parent node), index or id(key node)) -> where the alias was written
        self.alias_at: dict[tuple[int, int], Mark] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            where = Mark(mark.line + 1, mark.column + 1)
            self.alias_uses += 1
            if self.alias_uses > MAX_ALIASES:
                raise SourceError([Problem(self.file, where, "", f"too many YAML aliases "
                                           f"(limit {MAX_ALIASES}): a site config needs far "
                                           f"fewer; write the values out")])
            if parent is not None and index is not None:
                self.alias_at[(id(parent), _index_key(index))] = where
        return super().compose_node(parent, index)


def _index_key(index: Any) -> int:
    return index if isinstance(index, int) else id(index)


def _too_many(file: str, where: Mark) -> SourceError:
    return SourceError([Problem(file, where, "", f"too many YAML aliases (limit {MAX_NODES} "
                                                 f"values once expanded): the aliases here "
                                                 f"expand past it; write the values out")])


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Walk:
    """Turns the node graph into data, counting every value as aliases expand it."""

    def __init__(self, loader: _Loader, src: Source) -> None:
        self.loader = loader
        self.src = src
        self.count = 0

    def child(self, parent: yaml.Node, index: Any, node: yaml.Node, path: PathKey,
              via: Mark | None) -> Any:
        alias = self.loader.alias_at.get((id(parent), _index_key(index)))
        return self.walk(node, path, via or alias)

    def walk(self, node: yaml.Node, path: PathKey, via: Mark | None = None) -> Any:
        """``via``: the outermost alias on the way here (where an expansion error points)."""
        loader, src = self.loader, self.src
        self.count += 1
        if self.count > MAX_NODES:
            raise _too_many(src.file, via or _mark(node))
        src.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) or key is None:
                    raise SourceError([Problem(src.file, _mark(key_node), format_path(path),
                                               f"mapping key must be a scalar, found "
                                               f"{_short(key)}")])
                key_s = key if isinstance(key, str) else str(key)
                if key_s in out:
                    raise SourceError([Problem(src.file, _mark(key_node), format_path(path),
                                               f"duplicate key '{key_s}'")])
                src.keys[(*path, key_s)] = _mark(key_node)
                out[key_s] = self.child(node, key_node, value_node, (*path, key_s), via)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.child(node, i, c, (*path, i), via) for i, c in enumerate(node.value)]
        return loader.construct_object(node, deep=True)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_yaml_text(text: str, file: str) -> Source:
    """Parse YAML text; syntax errors become a SourceError with the position."""
    src = Source(file=file, data=None)
    loader = _Loader(text, file)
    try:
        node = loader.get_single_node()
        src.data = {} if node is None else _Walk(loader, src).walk(node, ())
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        mark = Mark(m.line + 1, m.column + 1) if m is not None else None
        what = explain(exc, text) or " ".join(s for s in (exc.context, exc.problem) if s)
        raise SourceError([Problem(file, mark, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file, None, "", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise SourceError([Problem(file, None, "", "YAML nested too deeply")]) from None
    finally:
        loader.dispose()
    return src


def read_bounded(path: Path, name: str) -> str:
    """The file's text, refused past MAX_FILE_BYTES (a config is kilobytes; this bounds a
    wrong path such as a log file or /dev/zero). Raises OSError/UnicodeDecodeError as is."""
    with path.open("rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SourceError([Problem(name, None, "", f"file too large (over "
                                                   f"{MAX_FILE_BYTES // (1024 * 1024)} MiB; "
                                                   f"a site config is far smaller)")])
    return data.decode("utf-8")


def load_yaml_file(path: str | Path) -> Source:
    p = Path(path)
    try:
        text = read_bounded(p, str(p))
    except FileNotFoundError:
        raise SourceError([Problem(str(p), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError([Problem(str(p), None, "", f"cannot read file: {exc}")]) from None
    return load_yaml_text(text, str(p))


# The error type of a key that moved elsewhere in the schema (its message says where): it
# is reported at the key, as an unknown key is.
MOVED_KEY = "moved_key"
_AT_KEY = ("extra_forbidden", MOVED_KEY)


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
        elif kind == MOVED_KEY:
            msg = e["msg"]
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"]
            if "input" in e and kind not in ("value_error", "assertion_error"):
                msg += f" (found {_describe_input(e['input'])})"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        mark = src.keys.get(loc) if kind in _AT_KEY else src.mark(loc)
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
