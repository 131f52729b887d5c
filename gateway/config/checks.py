"""Cross-reference checks of a schema-valid site config: ids, site, connections, historian.

pydantic checks each field on its own; these checks look across fields and sections and
at the machine (time zone database, directories). Each returns positioned problems and
all of them run, so an engineer sees every mistake in one pass. Device checks (templates,
points, unit ids) are in ``checks_devices``.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from pathlib import Path

from drivers.template import TEMPLATE_DIR, PlacedDevice, Template, TemplateBase
from gateway.config.checks_devices import TemplateSet, check_devices, check_template_dirs
from gateway.config.models import SiteConfig
from gateway.config.sections import hooks
from gateway.config.suggest import unknown_name
from gateway.yamlsrc import Mark, Problem, Source


def _line(mark: Mark | None) -> str:
    return f"line {mark.line}" if mark else "elsewhere"


def check_ids(cfg: SiteConfig, src: Source) -> list[Problem]:
    """Gateway, connection and device ids are each unique within their section."""
    out: list[Problem] = []
    sections: list[tuple[str, str, Sequence[str]]] = [
        ("gateways", "gateway", [g.id for g in cfg.gateways]),
        ("connections", "connection", [c.id for c in cfg.connections]),
        ("devices", "device", [d.id for d in cfg.devices]),
    ]
    for section, kind, ids in sections:
        first: dict[str, int] = {}
        for i, ident in enumerate(ids):
            if ident in first:
                earlier = src.mark((section, first[ident], "id"))
                out.append(src.problem((section, i, "id"),
                                       f"duplicate {kind} id '{ident}' (first used at "
                                       f"{_line(earlier)}, {section}[{first[ident]}])"))
            else:
                first[ident] = i
    return out


def check_site(cfg: SiteConfig, src: Source) -> list[Problem]:
    """Time zone exists, coordinates come in pairs, grid limits make sense."""
    out: list[Problem] = []
    site = cfg.site
    tz_problem = timezone_problem(site.timezone)
    if tz_problem:
        out.append(src.problem(("site", "timezone"), tz_problem))
    if (site.latitude is None) != (site.longitude is None):
        given, missing = (("latitude", "longitude") if site.latitude is not None
                          else ("longitude", "latitude"))
        out.append(src.problem(("site", given),
                               f"'{given}' is given without '{missing}': give both or neither"))
    grid = site.grid
    if grid.import_limit_kw == 0:
        out.append(src.problem(("site", "grid", "import_limit_kw"),
                               "an import limit of 0 kW would shed every load whenever local "
                               "generation is short; omit it for no limit"))
    if not 100 <= grid.nominal_v <= 1000:
        out.append(src.problem(("site", "grid", "nominal_v"),
                               f"expected a low-voltage line-to-neutral voltage between 100 and "
                               f"1000 V (found {grid.nominal_v:g})"))
    return out


def timezone_problem(name: str) -> str | None:
    """None if ``name`` is an IANA time zone this machine knows, else the message."""
    try:
        zoneinfo.ZoneInfo(name)
        return None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = zoneinfo.available_timezones()
    msg = unknown_name("time zone", name, known, where="IANA zones")
    return msg + " (examples: UTC, Europe/Berlin, America/New_York)" if "mean" not in msg else msg


def check_connections(cfg: SiteConfig, src: Source) -> list[Problem]:
    """Each connection's own checks (its driver declares them), and one connection per
    physical endpoint."""
    out: list[Problem] = []
    endpoints: dict[tuple[str, ...], int] = {}
    gateways = [g.id for g in cfg.gateways]
    for i, conn in enumerate(cfg.connections):
        out.extend(conn.check(i, src))
        for field, named in conn.gateway_refs().items():
            out.extend(src.problem(("connections", i, *field, gw),
                                   unknown_name("gateway", gw, gateways, where="gateways"))
                       for gw in named if gw not in gateways)
        found = conn.endpoint()
        if found is None:
            continue
        key, what = found
        if key in endpoints:
            other = cfg.connections[endpoints[key]].id
            out.append(src.problem(("connections", i),
                                   f"{what} is already connection '{other}': define one "
                                   f"connection per endpoint and let devices share it"))
        else:
            endpoints[key] = i
    return out


def check_historian(cfg: SiteConfig, src: Source) -> list[Problem]:
    """The historian's database can be created: its directory exists.

    A relative path is taken from the daemon's working directory (the systemd unit sets
    it to /var/lib/autogrid). Write permission is not checked: `autogrid check` often
    runs as another user than the service.
    """
    hist = cfg.historian
    if not hist.enabled:
        return []
    path = hist.path.expanduser()
    if path.is_dir():
        return [src.problem(("historian", "path"),
                            f"expected a database file name, found the directory '{path}'")]
    parent = path.parent
    if not parent.is_dir():
        return [src.problem(("historian", "path"),
                            f"directory '{parent}' does not exist (create it, or point "
                            f"'path' at an existing directory)")]
    return []


def run_checks(cfg: SiteConfig, src: Source, template_dir: Path | None = None
               ) -> tuple[list[Problem], dict[str, Template]]:
    """Every cross-reference check; problems in file order, and the templates loaded."""
    library = cfg.template_library(template_dir or TEMPLATE_DIR)
    templates = TemplateSet(library)
    problems = [*check_ids(cfg, src), *check_site(cfg, src), *check_connections(cfg, src),
                *check_template_dirs(cfg, src, library),
                *check_devices(cfg, src, templates), *check_historian(cfg, src),
                *[p for check in hooks("checks") for p in check(cfg, src)]]
    problems += check_protocols(cfg, src, templates.loaded)
    return sort_problems(problems), templates.loaded


def check_protocols(cfg: SiteConfig, src: Source, templates: dict[str, Template]
                    ) -> list[Problem]:
    """Each protocol's checks across its devices (its template model declares them)."""
    conns = {c.id: c for c in cfg.connections}
    by_model: dict[type[TemplateBase], list[PlacedDevice]] = {}
    for i, dev in enumerate(cfg.devices):
        conn, tpl = conns.get(dev.connection), templates.get(dev.template)
        if conn is not None and tpl is not None:
            by_model.setdefault(type(tpl), []).append(PlacedDevice(i, dev, conn, tpl))
    out: list[Problem] = []
    for model, placed in by_model.items():
        out.extend(model.check_devices(placed, src))
    return out


def run_warnings(cfg: SiteConfig, src: Source) -> list[Problem]:
    """What is accepted but probably not meant; ``check`` and ``run`` print each one."""
    return sort_problems([p for warn in hooks("warnings") for p in warn(cfg, src)])


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """File order (by line and column); unpositioned problems last, stable otherwise."""
    def key(p: Problem) -> tuple[int, int]:
        return (p.mark.line, p.mark.col) if p.mark else (1 << 30, 0)

    return sorted(problems, key=key)
