"""Load and check a site config: schema, then cross references, all problems at once.

``load_config`` is what the daemon calls (it raises SourceError listing every problem);
``check_config`` returns the problems instead; ``run_check`` is `autogrid check CONFIG`.
No traceback reaches a site engineer for a bad file: every problem prints as
``file:line:col: path: message``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from drivers.registry import RegistryError, connection_types
from drivers.template import Template
from gateway.config.checks import run_checks, run_warnings, sort_problems
from gateway.config.models import SiteConfig
from gateway.config.partial import parse_path, remainder
from gateway.config.sections import parse_hook
from gateway.yamlsrc import (
    Mark,
    Problem,
    Source,
    SourceError,
    load_yaml_text,
    parse_model,
    read_bounded,
)

if TYPE_CHECKING:
    from sim_devices.settings import SimulationSettings


class ConfigUnreadable(SourceError):
    """The file is missing or cannot be read (exit code 2 rather than 1)."""


@dataclass
class LoadedConfig:
    """A site config that passed every check, with the positions it came from."""

    config: SiteConfig
    source: Source
    path: Path
    templates: dict[str, Template] = field(default_factory=dict)  # by template name
    simulation: SimulationSettings | None = None  # the validated ``simulation:`` section
    warnings: list[Problem] = field(default_factory=list)  # accepted, but printed

    def template_of(self, device_id: str) -> Template:
        """The loaded template of device ``device_id``."""
        for dev in self.config.devices:
            if dev.id == device_id:
                return self.templates[dev.template]
        raise KeyError(device_id)


def read_source(path: str | Path) -> Source:
    """Parse the YAML file; raise ConfigUnreadable or SourceError (syntax) with positions."""
    p = Path(path)
    name = str(path)
    try:
        text = read_bounded(p, name)
    except FileNotFoundError:
        raise ConfigUnreadable([Problem(name, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigUnreadable([Problem(name, None, "", "is a directory, expected a YAML "
                                                        "file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigUnreadable([Problem(name, None, "", f"cannot read file: not UTF-8 text "
                                                        f"(byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigUnreadable([Problem(name, None, "", f"cannot read file: "
                                                        f"{exc.strerror or exc}")]) from None
    try:
        src = load_yaml_text(text, name)
    except SourceError as err:
        raise SourceError([_with_hint(p) for p in err.problems]) from None
    if src.data is None or src.data == {}:
        raise SourceError([Problem(name, Mark(1, 1), "", "the file is empty; a site config "
                                                         "needs at least 'site' and "
                                                         "'gateways'")])
    if not isinstance(src.data, dict):
        found = type(src.data).__name__
        raise SourceError([Problem(name, src.mark(()) or Mark(1, 1), "",
                                   f"expected a mapping with 'site', 'gateways', 'connections' "
                                   f"and 'devices' at the top level (found a {found})")])
    return src


def _with_hint(problem: Problem) -> Problem:
    """Say plainly when a syntax error is a tab (PyYAML only says it "cannot start any token")."""
    if "'\\t'" not in problem.message:
        return problem
    return Problem(problem.file, problem.mark, problem.path,
                   problem.message + " (a tab; YAML indentation must use spaces)")


_BAD_TAG = re.compile(r"^Input tag '(?P<tag>.*)' found using '(?P<key>\w+)' does not match any "
                      r"of the expected tags: (?P<tags>.*?)(?: \(found .*\))?$")
_NO_TAG = re.compile(r"^Unable to extract tag using discriminator '(?P<key>\w+)'")


def _refine(problem: Problem, src: Source) -> Problem:
    """Point a union-tag error at the ``type:`` key instead of the whole mapping."""
    bad, none = _BAD_TAG.match(problem.message), _NO_TAG.match(problem.message)
    if not (bad or none):
        return problem
    key = (bad or none).group("key")  # type: ignore[union-attr]
    path = (*parse_path(problem.path), key)
    if bad:
        msg = f"unknown {key} '{bad.group('tag')}' (expected one of: {bad.group('tags')})"
    elif problem.path.startswith("connections"):
        msg = (f"required field is missing (one of: "
               f"{', '.join(repr(t) for t in connection_types())})")
    else:
        msg = "required field is missing"
    return Problem(problem.file, src.mark(path) or problem.mark, f"{problem.path}.{key}", msg)


def _simulation(cfg: SiteConfig, src: Source) -> tuple[SimulationSettings | None, list[Problem]]:
    """Validate the ``simulation:`` section (clock, weather, per-device physics)."""
    parse = parse_hook("simulation")
    try:
        return (None if parse is None else parse(cfg, src)), []
    except SourceError as err:
        return None, err.problems


def anchor_paths(cfg: SiteConfig, config_file: Path) -> None:
    """Site template directories are relative to the config file, not to the directory
    the command runs in (so `autogrid check` and the service see the same files)."""
    for entry in cfg.templates or ():
        if not entry.path.is_absolute():
            entry.path = config_file.parent / entry.path


def _cross_of_rest(src: Source, schema: list[Problem], template_dir: Path | None
                   ) -> list[Problem]:
    """Cross-reference problems of the part of the config the schema accepted."""
    rest = remainder(src, schema)
    if rest is None:
        return []
    anchor_paths(rest.config, Path(src.file))
    problems, _templates = run_checks(rest.config, rest.source, template_dir)
    problems += _simulation(rest.config, rest.source)[1]
    return rest.restore(problems)


def _load(path: str | Path, template_dir: Path | None) -> LoadedConfig:
    src = read_source(path)
    try:
        connection_types()  # the schema is built from every driver's declaration
    except RegistryError as exc:
        raise SourceError([Problem(src.file, None, "", f"driver plug-ins: {exc}")]) from None
    try:
        cfg = parse_model(SiteConfig, src)
    except SourceError as err:
        schema = [_refine(p, src) for p in err.problems]
        raise SourceError(sort_problems(schema + _cross_of_rest(src, schema, template_dir))
                          ) from None
    anchor_paths(cfg, Path(path))
    problems, templates = run_checks(cfg, src, template_dir)
    simulation, sim_problems = _simulation(cfg, src)
    problems = sort_problems(problems + sim_problems)
    if problems:
        raise SourceError(problems)
    return LoadedConfig(cfg, src, Path(path), templates, simulation, run_warnings(cfg, src))


def warning_line(p: Problem) -> str:
    """A warning as one line: ``file:line:col: warning: path: message``."""
    where = f"{p.file}:{p.mark.line}:{p.mark.col}" if p.mark else p.file
    return f"{where}: warning: {p.path}: {p.message}" if p.path else \
        f"{where}: warning: {p.message}"


def load_config(path: str | Path, *, template_dir: Path | None = None) -> LoadedConfig:
    """Load a site config; raise SourceError listing every problem, positioned.

    Schema errors and cross-reference problems are reported together, in file order
    (cross references are checked on the part of the config the schema accepted).
    ``template_dir`` defaults to the built-in drivers/templates. Raises ConfigUnreadable
    (a SourceError) for a missing file.
    """
    return _load(path, template_dir)


def check_config(path: str | Path, *, template_dir: Path | None = None) -> list[Problem]:
    """Every problem of a site config (empty list: it is fine). Never raises for bad input."""
    try:
        _load(path, template_dir)
    except SourceError as err:
        return err.problems
    return []


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def run_check(path: str, out: TextIO, *, template_dir: Path | None = None) -> int:
    """`autogrid check CONFIG`: print problems and a summary; 0 ok, 1 errors, 2 unreadable."""
    try:
        loaded = _load(path, template_dir)
    except ConfigUnreadable as err:
        for p in err.problems:
            print(p, file=out)
        return 2
    except SourceError as err:
        for p in err.problems:
            print(p, file=out)
        print(f"{path}: {_plural(len(err.problems), 'error')}", file=out)
        return 1
    cfg = loaded.config
    for w in loaded.warnings:
        print(warning_line(w), file=out)
    warned = f", {_plural(len(loaded.warnings), 'warning')}" if loaded.warnings else ""
    print(f"{path}: OK — {_plural(len(cfg.devices), 'device')} on "
          f"{_plural(len(cfg.connections), 'connection')}, "
          f"{_plural(len(cfg.gateways), 'gateway')}{warned}", file=out)
    return 0
