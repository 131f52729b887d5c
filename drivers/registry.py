"""Driver registry: a built-in table extended by the ``autogrid.drivers`` entry points.

A driver is named by "module:Class" and imported only when first asked for, so the
daemon loads pymodbus only if a site has Modbus devices. A third-party package adds a
protocol by declaring, in its pyproject.toml::

    [project.entry-points."autogrid.drivers"]
    mqtt = "autogrid_mqtt.driver:MqttDriver"

An unknown name fails with a message naming it and the known ones; a plug-in that
reuses a taken name is refused rather than silently shadowing it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from functools import cache

from drivers.base import Driver

ENTRY_POINT_GROUP = "autogrid.drivers"

BUILTIN: dict[str, str] = {
    "modbus": "drivers.modbus.driver:ModbusDriver",
    "dnp3": "drivers.dnp3.driver:Dnp3Driver",
    "can": "drivers.can.driver:CanDriver",
}


class RegistryError(ValueError):
    """A driver cannot be found, loaded or registered."""


class UnknownDriver(RegistryError):
    """No driver has this name (or none serves this connection type)."""


class DuplicateDriver(RegistryError):
    """Two registrations claim the same driver name or connection type."""


@cache
def available() -> dict[str, str]:
    """Every known driver: name -> "module:Class" (built-ins, then entry points)."""
    table = dict(BUILTIN)
    origin = dict.fromkeys(BUILTIN, "built in")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        if ep.name in table:
            if table[ep.name] == ep.value:
                continue  # the same class declared twice (e.g. our own package metadata)
            raise DuplicateDriver(
                f"driver '{ep.name}' from {dist} ({ep.value}) is already registered "
                f"({origin[ep.name]}: {table[ep.name]}); rename one of them")
        table[ep.name] = ep.value
        origin[ep.name] = f"entry point of {dist}"
    return table


def driver_names() -> list[str]:
    return sorted(available())


@cache
def get_driver(name: str) -> type[Driver]:
    """The driver class called ``name``, importing its module now if needed."""
    table = available()
    target = table.get(name)
    if target is None:
        raise UnknownDriver(f"unknown driver '{name}' (known: {', '.join(sorted(table))})")
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr or "Driver")
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"driver '{name}' ({target}) cannot be loaded: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise RegistryError(f"driver '{name}' ({target}) is not a drivers.base.Driver subclass")
    return obj


def create_driver(name: str) -> Driver:
    """A new instance of the driver called ``name`` with default options."""
    return get_driver(name)()


@cache
def _connection_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for name in available():
        for conn_type in get_driver(name).connection_types:
            other = table.get(conn_type)
            if other is not None and other != name:
                raise DuplicateDriver(f"connection type '{conn_type}' is served by both "
                                      f"driver '{other}' and driver '{name}'")
            table[conn_type] = name
    return table


def driver_for_connection_type(conn_type: str) -> str:
    """The driver name that serves a config ``connections[].type`` (e.g. "modbus_tcp").

    Answers from each driver class's ``connection_types``, so it loads the drivers;
    two drivers claiming one type are refused.
    """
    table = _connection_table()
    found = table.get(conn_type)
    if found is None:
        raise UnknownDriver(f"no driver serves connection type '{conn_type}' "
                            f"(known: {', '.join(sorted(table))})")
    return found


def reset() -> None:
    """Forget discovered entry points and loaded classes (tests, plug-in installs)."""
    available.cache_clear()
    get_driver.cache_clear()
    _connection_table.cache_clear()
