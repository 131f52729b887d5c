"""Device checks: templates exist and load, natures match, connections, owning gateways,
unit ids, point names and safe setpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.library import TemplateLibrary
from drivers.registry import RegistryError, protocol_for_connection_type
from drivers.template import Template
from gateway.config.models import Device, SiteConfig
from gateway.config.suggest import unknown_name
from gateway.model import NATURES, Kind, Nature
from gateway.yamlsrc import PathKey, Problem, Source, SourceError, format_path

# Ratings that only make sense for some natures (catches copy-paste between devices).
RATING_NATURES: dict[str, set[Nature]] = {
    "kwp": {Nature.PV_INVERTER},
    "capacity_kwh": {Nature.BESS, Nature.BMS},
}


def key_problem(src: Source, path: PathKey, message: str) -> Problem:
    """A problem positioned at the key of ``path`` rather than at its value."""
    mark = src.keys.get(tuple(path)) or src.mark(path)
    return Problem(src.file, mark, format_path(path), message)


@dataclass
class TemplateSet:
    """The site's templates (built-ins and its own directories), each loaded at most once
    per check run."""

    library: TemplateLibrary
    loaded: dict[str, Template] = field(default_factory=dict)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (why, first user)

    @property
    def names(self) -> list[str]:
        return self.library.names

    def load(self, name: str) -> Template:
        """The template ``name``; raises SourceError if its file is invalid."""
        if name not in self.loaded:
            self.loaded[name] = self.library.load(name)
        return self.loaded[name]


def check_template_dirs(cfg: SiteConfig, src: Source, library: TemplateLibrary
                        ) -> list[Problem]:
    """The site's template directories exist, and none shadows a template unasked."""
    dirs = cfg.template_dirs()
    out = [src.problem(("templates", i, "path"),
                       f"template directory '{dirs[i].path}' does not exist")
           for i in library.missing]
    out += [src.problem(("templates", c.source), c.message) for c in library.conflicts]
    return out


def _template_of(dev: Device, i: int, src: Source, templates: TemplateSet,
                 out: list[Problem]) -> Template | None:
    here = ("devices", i, "template")
    name = dev.template
    if name not in templates.names:
        out.append(src.problem(here, unknown_name("template", name, templates.names)))
        return None
    if name in templates.failed:
        _why, first = templates.failed[name]
        out.append(src.problem(here, f"template '{name}' does not load (see {first})"))
        return None
    try:
        return templates.load(name)
    except SourceError as err:
        inner = "; ".join(str(p) for p in err.problems)
        n = len(err.problems)
        templates.failed[name] = (inner, format_path(here))
        out.append(src.problem(here, f"template '{name}' does not load "
                                     f"({n} problem{'s' if n != 1 else ''}): {inner}"))
        return None


def _check_points(dev: Device, i: int, tpl: Template, src: Source, out: list[Problem]) -> None:
    """``points`` and ``safe_setpoints`` name points the template has (and can write)."""
    if dev.points is not None:
        if not dev.points:
            out.append(src.problem(("devices", i, "points"),
                                   "an empty list polls nothing; omit 'points' to poll every "
                                   "point of the template"))
        seen: set[str] = set()
        for j, name in enumerate(dev.points):
            here: PathKey = ("devices", i, "points", j)
            if name in seen:
                out.append(src.problem(here, f"point '{name}' is listed twice"))
            elif name not in tpl.points:
                out.append(src.problem(here, _unknown_point(name, dev.template,
                                                            list(tpl.points), "its points")))
            seen.add(name)
    specs = NATURES[tpl.nature]
    for name, value in dev.safe_setpoints.items():
        key: PathKey = ("devices", i, "safe_setpoints", name)
        if name not in tpl.points:
            out.append(key_problem(src, key, _unknown_point(name, dev.template, tpl.writable,
                                                             "writable points")))
            continue
        if name not in tpl.writable:
            writable = ", ".join(sorted(tpl.writable)) or "none"
            out.append(key_problem(src, key, f"point '{name}' of template '{dev.template}' is "
                                              f"read-only; a safe setpoint must be writable "
                                              f"(writable: {writable})"))
            continue
        spec = specs.get(name)
        if spec is None:
            continue
        written = _raw(src, key, value)
        if spec.kind is Kind.BOOL and not isinstance(value, bool):
            out.append(src.problem(key, f"'{name}' is on/off: expected true or false "
                                         f"(found {_yaml(written)})"))
        elif spec.kind is not Kind.BOOL and isinstance(value, bool):
            out.append(src.problem(key, f"'{name}' is a number in {spec.unit or 'no unit'}: "
                                         f"expected a number (found {_yaml(written)})"))


def _unknown_point(name: str, template: str, known: list[str], where: str) -> str:
    msg = unknown_name("point", name, known, where=where)
    return msg.replace(f"point '{name}'", f"point '{name}' in template '{template}'", 1)


def _check_ratings(dev: Device, i: int, src: Source, out: list[Problem]) -> None:
    for rating, natures in RATING_NATURES.items():
        if getattr(dev.ratings, rating) is not None and dev.nature not in natures:
            allowed = ", ".join(sorted(natures))
            out.append(key_problem(src, ("devices", i, "ratings", rating),
                                   f"'{rating}' applies to {allowed} devices, not to a "
                                   f"{dev.nature}"))


def check_devices(cfg: SiteConfig, src: Source, templates: TemplateSet) -> list[Problem]:
    """Every per-device cross reference; see the module docstring."""
    out: list[Problem] = []
    conns = {c.id: c for c in cfg.connections}
    gateway_ids = [g.id for g in cfg.gateways]
    unit_users: dict[tuple[str, int], int] = {}
    serial_owners: dict[str, dict[str, int]] = {}  # connection id -> gateway id -> device idx
    for i, dev in enumerate(cfg.devices):
        tpl = _template_of(dev, i, src, templates, out)
        conn = conns.get(dev.connection)
        if conn is None:
            out.append(src.problem(("devices", i, "connection"),
                                   unknown_name("connection", dev.connection, conns,
                                                where="defined")))
        owner = dev.gateway
        if owner is None and len(gateway_ids) > 1:
            out.append(src.problem(("devices", i, "gateway"),
                                   f"required: this site has {len(gateway_ids)} gateways "
                                   f"({', '.join(gateway_ids)}); say which one polls "
                                   f"'{dev.id}'"))
        elif owner is not None and owner not in gateway_ids:
            out.append(src.problem(("devices", i, "gateway"),
                                   unknown_name("gateway", owner, gateway_ids, where="defined")))
        if tpl is not None:
            if tpl.nature != dev.nature:
                out.append(src.problem(("devices", i, "nature"),
                                       f"template '{dev.template}' describes a "
                                       f"{tpl.nature}, but the device says {dev.nature}"))
            if conn is not None and _protocol(conn.type) != tpl.protocol:
                out.append(src.problem(("devices", i, "connection"),
                                       f"connection '{conn.id}' is {conn.type}, but template "
                                       f"'{dev.template}' speaks {tpl.protocol}"))
            _check_points(dev, i, tpl, src, out)
        _check_ratings(dev, i, src, out)
        if dev.max_age_s is not None and dev.max_age_s < dev.poll_interval_s:
            out.append(src.problem(("devices", i, "max_age_s"),
                                   f"must be at least poll_interval_s ({dev.poll_interval_s:g} "
                                   f"s), or every reading is stale (found {dev.max_age_s:g} s)"))
        if conn is None or not dev.enabled or not conn.unit_ids_unique:
            continue  # e.g. DNP3 devices share an outstation; CAN ids are checked by frame id
        written = ("devices", i, "unit_id") in src.values
        unit_txt = f"unit id {dev.unit_id}" + ("" if written else " (the default)")
        if dev.unit_id == 0 and conn.unit_zero_is_broadcast:
            out.append(src.problem(("devices", i, "unit_id"),
                                   f"{unit_txt} is the broadcast address on a serial bus; "
                                   f"devices never answer it (use 1..247)"))
        key = (conn.id, dev.unit_id)
        if key in unit_users:
            other = unit_users[key]
            out.append(src.problem(("devices", i, "unit_id"),
                                   f"{unit_txt} on connection '{conn.id}' is already used by "
                                   f"device '{cfg.devices[other].id}' (devices[{other}]); "
                                   f"two devices on one connection need different unit ids"))
        else:
            unit_users[key] = i
        if conn.one_box:
            owners = serial_owners.setdefault(conn.id, {})
            gw = owner or gateway_ids[0]
            if owners and gw not in owners:
                other_gw, other = next(iter(owners.items()))
                out.append(src.problem(("devices", i, "gateway"),
                                       f"serial connection '{conn.id}' is wired to one box, "
                                       f"but '{dev.id}' is owned by gateway '{gw}' and "
                                       f"'{cfg.devices[other].id}' by '{other_gw}'"))
            owners.setdefault(gw, i)
    return out


def _protocol(conn_type: str) -> str | None:
    try:
        return protocol_for_connection_type(conn_type)
    except RegistryError:
        return None


def _raw(src: Source, path: PathKey, default: object) -> object:
    """The value as parsed from the YAML, before pydantic coerced it (1, not 1.0)."""
    node = src.data
    try:
        for part in path:
            node = node[part]
    except (KeyError, IndexError, TypeError):
        return default
    return node


def _yaml(value: object) -> str:
    """A value as the engineer wrote it in YAML (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)
