"""Where a site's templates come from: the built-ins plus the site's own directories.

A site config may list directories of its own templates (``templates:``); they are
loaded and checked like the built-ins. A site template with a built-in's name replaces
it only where the config says so (``override: true`` for the directory, or a list of
names), and one name in two site directories is refused: a device model must never
change because a file appeared somewhere. Files whose name starts with ``_`` are shared
blocks for ``include:`` (see drivers.template), not templates.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drivers.template import (
    TEMPLATE_DIR,
    Template,
    load_template,
    load_template_file,
    template_names,
)


@dataclass(frozen=True)
class SiteTemplates:
    """One directory of site templates and which built-ins it may replace."""

    directory: Path
    override: bool | Collection[str] = False

    def may_replace(self, name: str) -> bool:
        return self.override is True or (not isinstance(self.override, bool)
                                          and name in self.override)


@dataclass
class Conflict:
    """A template name the library refuses to resolve, and why (for the site check)."""

    source: int  # index of the site directory in the config's ``templates:``
    name: str
    message: str


@dataclass
class TemplateLibrary:
    """Template names -> files, built-ins first, then the site's directories."""

    site: Sequence[SiteTemplates] = ()
    builtin: Path | None = TEMPLATE_DIR
    conflicts: list[Conflict] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # site directories that do not exist
    _paths: dict[str, Path] = field(default_factory=dict)
    _loaded: dict[str, Template] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.builtin is not None and self.builtin.is_dir():
            self._paths = {n: self.builtin / f"{n}.yaml" for n in template_names(self.builtin)}
        builtin = set(self._paths)
        from_site: dict[str, int] = {}
        for i, entry in enumerate(self.site):
            if not entry.directory.is_dir():
                self.missing.append(i)
                continue
            for name in template_names(entry.directory):
                path = entry.directory / f"{name}.yaml"
                if name in from_site:
                    first = self.site[from_site[name]].directory
                    self.conflicts.append(Conflict(i, name, (
                        f"template '{name}' is in both '{first}' and '{entry.directory}'; "
                        f"keep one (a device model must not depend on directory order)")))
                    continue
                from_site[name] = i
                if name in builtin and not entry.may_replace(name):
                    self.conflicts.append(Conflict(i, name, (
                        f"template '{name}' in '{entry.directory}' has the name of a "
                        f"built-in template; rename it, or set 'override: true' (or "
                        f"'override: [{name}]') to use it instead of the built-in")))
                    continue
                self._paths[name] = path

    @property
    def names(self) -> list[str]:
        return sorted(self._paths)

    def path(self, name: str) -> Path:
        """The file of template ``name``; KeyError naming the known ones."""
        found = self._paths.get(name)
        if found is None:
            raise KeyError(f"unknown template '{name}' (known: {', '.join(self.names)})")
        return found

    def is_builtin(self, name: str) -> bool:
        return self.builtin is not None and self._paths.get(name) == self.builtin / f"{name}.yaml"

    def load(self, name: str) -> Template:
        """The template ``name``, validated; raises SourceError for a bad file."""
        if name not in self._loaded:
            path = self.path(name)
            if self.builtin is not None and self.builtin.resolve() == TEMPLATE_DIR.resolve() \
                    and self.is_builtin(name):
                self._loaded[name] = load_template(name)  # shared cache with the drivers
            else:
                self._loaded[name] = load_template_file(path)
        return self._loaded[name]
