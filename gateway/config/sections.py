"""Config sections owned by the features that use them.

The site config names its sections (``control:``, ``tariff:``, ``console:``, ...), but
each section's model and checks belong to its feature: control, the scheduler, analytics,
the API's role policy, the simulator. ``gateway/config`` imports none of them: a section's
type in the schema is a placeholder resolved from the table below when the schema is
first built (the first validation of a config), so importing the config package loads no
feature, and no feature module has to import the config schema to be described by it.

A feature declares its section here as import paths ("module:attr"): its model, and
optionally its checks and warnings (functions of (SiteConfig, Source) -> [Problem]) and a
``parse`` step whose result the loader keeps (the simulator's settings).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import CoreSchema


@dataclass(frozen=True)
class Section:
    """What a feature declares about its config section (import paths, loaded lazily)."""

    model: str | None = None  # "module:Class" of the section's pydantic model
    checks: str | None = None  # "module:function" (cfg, src) -> list[Problem]
    warnings: str | None = None  # the same, for what is accepted but printed
    parse: str | None = None  # "module:function" (cfg, src) -> value; raises SourceError


SECTIONS: dict[str, Section] = {
    "control": Section("gateway.control.config:ControlConfig",
                       checks="gateway.control.config_checks:check_control",
                       warnings="gateway.control.config_checks:control_warnings"),
    "devices.control": Section("gateway.control.config:DeviceControl"),
    "tariff": Section("gateway.control.scheduler_config:Tariff"),
    "scheduler": Section("gateway.control.scheduler_config:SchedulerSettings"),
    "analytics": Section("gateway.analytics.config:AnalyticsSettings"),
    "console": Section("gateway.apipolicy:ConsoleSettings"),
    "api": Section("gateway.apilimits:ApiSettings"),
    "cluster": Section("gateway.cluster.config:ClusterConfig",
                       checks="gateway.cluster.config_checks:check_cluster"),
    "simulation": Section(parse="sim_devices.settings:load_simulation_settings"),
}


def register(key: str, section: Section) -> None:
    """Declare a section (a feature outside this package); a taken key is refused."""
    if key in SECTIONS and SECTIONS[key] != section:
        raise ValueError(f"config section '{key}' is already declared ({SECTIONS[key]})")
    SECTIONS[key] = section
    model_of.cache_clear()


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def model_of(key: str) -> type[BaseModel]:
    """The pydantic model of section ``key`` (imports its feature module now)."""
    target = SECTIONS[key].model
    if target is None:
        raise KeyError(f"config section '{key}' declares no model")
    model: type[BaseModel] = _load(target)
    return model


class _SectionType:
    """Pydantic schema of a section, built from its feature's model on first use."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler
                                     ) -> CoreSchema:
        return handler.generate_schema(model_of(self.key))


def section_type(key: str) -> Any:
    """The type to write in the schema for section ``key`` (resolved lazily)."""
    return Annotated[Any, _SectionType(key)]


def default_of(key: str) -> Callable[[], Any]:
    """A default factory: the section's model with its own defaults."""
    return lambda: model_of(key)()


def hooks(which: str) -> list[Callable[..., Any]]:
    """Every declared ``checks`` or ``warnings`` function (imports their modules now)."""
    return [_load(target) for s in SECTIONS.values()
            if (target := getattr(s, which)) is not None]


def parse_hook(key: str) -> Callable[..., Any] | None:
    """The declared ``parse`` step of section ``key``, or None."""
    target = SECTIONS[key].parse
    return None if target is None else _load(target)
