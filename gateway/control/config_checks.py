"""`autogrid check` and `run` on the ``control:`` section: device references at the
offending field, and a controller that cannot see the grid connection. Declared in
gateway.config.sections; kept apart from the section's models (gateway.control.config)
so those depend on nothing of the config schema.
"""

from __future__ import annotations

from gateway.config.models import SiteConfig
from gateway.control.config import grid_meter_issue, reference_issues
from gateway.yamlsrc import Problem, Source


def _grid_meter_issue(cfg: SiteConfig) -> tuple[bool, str] | None:
    assert cfg.control is not None
    meters = [(d.id, d.role) for d in cfg.devices if d.enabled and str(d.nature) == "meter"]
    return grid_meter_issue(cfg.control, meters)


def check_control(cfg: SiteConfig, src: Source) -> list[Problem]:
    """``autogrid check``: the section's device references at the offending field, and a
    controller that cannot see the grid connection at the ``control:`` key."""
    if cfg.control is None:
        return []
    natures = {d.id: str(d.nature) for d in cfg.devices}
    out = [src.problem(("control", *where), msg)
           for where, msg in reference_issues(cfg.control, natures)]
    issue = _grid_meter_issue(cfg)
    if issue is not None and issue[0]:
        out.append(_at_key(src, issue[1]))
    return out


def control_warnings(cfg: SiteConfig, src: Source) -> list[Problem]:
    """What ``check`` and ``run`` print but accept: a monitor-only control section (the
    controller off, or no strategy that needs grid power) without a grid meter."""
    if cfg.control is None:
        return []
    issue = _grid_meter_issue(cfg)
    return [_at_key(src, issue[1])] if issue is not None and not issue[0] else []


def _at_key(src: Source, message: str) -> Problem:
    """A problem positioned at the ``control:`` key itself (not its first field)."""
    return Problem(src.file, src.keys.get(("control",)) or src.mark(("control",)), "control",
                   message)
