"""Device templates: a device model described as data, validated on load.

A template maps the standard points of one nature (gateway.model.NATURES) to protocol
addresses. Code exists per protocol, never per device model. Each driver declares its
template model (a ``TemplateBase``) to the registry under its protocol name, and a
template file says which protocol it speaks (``protocol:``, default ``modbus``). Built-in
templates live in ``drivers/templates/*.yaml``; the file stem is the template name used
in site configs. The Modbus model is in ``drivers.modbus.template`` (its names are still
importable from here).
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.template_base import (  # noqa: F401  (the bases, importable from here too)
    TEMPLATE_DIR,
    DeviceSpec,
    PlacedDevice,
    StrictTemplatePart,
    TemplateBase,
    nature_problems,
)
from gateway.yamlsrc import (
    PathKey,
    Problem,
    Source,
    SourceError,
    load_yaml_file,
    parse_model,
)

if TYPE_CHECKING:
    from drivers.modbus.template import (  # noqa: F401  (names kept importable from here)
        Access,
        Function,
        ModbusPoint,
        ModbusTemplate,
        RegType,
    )

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_MOVED = {"Access", "Function", "ModbusPoint", "ModbusTemplate", "RegType"}


def __getattr__(name: str) -> Any:
    """The Modbus template names, now in drivers.modbus.template, for older imports."""
    if name in _MOVED:
        return getattr(importlib.import_module("drivers.modbus.template"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Template = TemplateBase  # an instance of the protocol's own model (a TemplateBase subclass)


def template_model(protocol: str) -> type[TemplateBase]:
    """The template model the driver of ``protocol`` declared; KeyError if none did."""
    from drivers import registry  # the registry imports this module's TemplateBase

    return registry.template_model(protocol)


def known_protocols() -> list[str]:
    from drivers import registry

    return registry.protocols()


def load_template_file(path: str | Path) -> Template:
    """Load and validate one template file; raise SourceError listing every problem.

    ``include: _block.yaml`` (or a list) merges shared blocks, relative to the template's
    directory, before validation: a mapping such as ``points`` is merged key by key (the
    template's own entry wins), anything else is taken only where the template has none.
    A problem in an included part is reported at its place in the included file.
    """
    src = load_yaml_file(path)
    if not isinstance(src.data, dict):
        raise SourceError([Problem(src.file, src.mark(()), "",
                                   "a template must be a mapping with 'nature' and 'points'")])
    origins = _include(src, Path(path).parent)
    try:
        return template_from_source(src)
    except SourceError as err:
        raise SourceError([_relocated(p, origins) for p in err.problems]) from None


def _include(src: Source, directory: Path) -> dict[PathKey, str]:
    """Merge the blocks ``src`` includes into it; the paths that came from each file."""
    wanted = src.data.pop("include", None)
    if wanted is None:
        return {}
    names = [wanted] if isinstance(wanted, str) else wanted
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise SourceError([src.problem(("include",), "expected a file name or a list of "
                                                     "file names of shared blocks")])
    origins: dict[PathKey, str] = {}
    for i, name in enumerate(names):
        where: PathKey = ("include",) if isinstance(wanted, str) else ("include", i)
        target = directory / name
        if not target.is_file():
            raise SourceError([src.problem(where, f"included file '{target}' does not exist")])
        block = load_yaml_file(target)
        if not isinstance(block.data, dict) or "include" in block.data:
            raise SourceError([block.problem((), "a shared block must be a mapping and "
                                                 "cannot include another block")])
        for key, value in block.data.items():
            mine = src.data.get(key)
            if isinstance(mine, dict) and isinstance(value, dict):
                for sub, v in value.items():
                    if sub not in mine:
                        mine[sub] = v
                        _take(src, block, (key, sub), origins)
            elif key not in src.data:
                src.data[key] = value
                _take(src, block, (key,), origins)
    return origins


def _take(src: Source, block: Source, prefix: PathKey, origins: dict[PathKey, str]) -> None:
    """Copy the positions under ``prefix`` from an included block into ``src``."""
    n = len(prefix)
    for table, into in ((block.values, src.values), (block.keys, src.keys)):
        for path, mark in table.items():
            if path[:n] == prefix:
                into[path] = mark
    origins[prefix] = block.file


def _relocated(problem: Problem, origins: dict[PathKey, str]) -> Problem:
    """A problem in an included part names the included file."""
    if not origins:
        return problem
    path = tuple(int(i) if i else k for k, i in _PATH_PART.findall(problem.path))
    for n in range(len(path), 0, -1):
        found = origins.get(path[:n])
        if found is not None:
            return Problem(found, problem.mark, problem.path, problem.message)
    return problem


def template_from_source(src: Source) -> Template:
    """Validate parsed template data with its protocol's model and its own checks."""
    protocol = src.data.get("protocol", "modbus")
    try:
        model = template_model(str(protocol))
    except KeyError:
        raise SourceError([src.problem(("protocol",), f"unknown protocol {protocol!r} (known: "
                                       f"{', '.join(known_protocols())})")]) from None
    tpl = parse_model(model, src)
    problems = tpl.check_source(src)
    if problems:
        raise SourceError(problems)
    return tpl


def template_names(directory: Path = TEMPLATE_DIR) -> list[str]:
    """The templates of a directory (``_name.yaml`` files are shared blocks, not templates)."""
    return sorted(p.stem for p in directory.glob("*.yaml") if not p.stem.startswith("_"))


@cache
def load_template(name: str) -> Template:
    """The built-in template called ``name`` (file stem under drivers/templates)."""
    path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown template '{name}' (known: {', '.join(template_names())})")
    return load_template_file(path)
