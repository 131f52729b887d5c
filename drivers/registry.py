"""Driver registry: a built-in table extended by the ``autogrid.drivers`` entry points.

Each entry names a driver's declaration (a ``drivers.base.DriverInfo``: protocol,
connection models, template model) or its Driver class. Declarations are light; the
driver class itself is imported only when a device first attaches, so the daemon loads
pymodbus only if a site has Modbus devices. The site config's connection union, the
connection -> protocol check and the template loader are all built from here: a
third-party package adds a protocol by declaring, in its pyproject.toml::

    [project.entry-points."autogrid.drivers"]
    mqtt = "autogrid_mqtt:DRIVER"          # a DriverInfo (or "autogrid_mqtt.driver:MqttDriver")

An unknown name fails with a message naming it and the known ones; a plug-in that
reuses a taken driver name, protocol or connection type is refused rather than silently
shadowing it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from functools import cache
from typing import Any

from drivers.base import Driver, DriverInfo
from drivers.connection import ConnectionBase
from drivers.template_base import TemplateBase

ENTRY_POINT_GROUP = "autogrid.drivers"

BUILTIN: dict[str, str] = {
    "modbus": "drivers.modbus:DRIVER",
    "dnp3": "drivers.dnp3:DRIVER",
    "can": "drivers.can:DRIVER",
}


class RegistryError(ValueError):
    """A driver cannot be found, loaded or registered."""


class UnknownDriver(RegistryError):
    """No driver has this name (or none serves this connection type)."""


class DuplicateDriver(RegistryError):
    """Two registrations claim the same driver name, protocol or connection type."""


def _import(target: str, what: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr or "Driver")
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"{what} ({target}) cannot be loaded: {exc}") from exc


@cache
def available() -> dict[str, str]:
    """Every known driver: name -> "module:attr" (built-ins, then entry points)."""
    table = dict(BUILTIN)
    origin = dict.fromkeys(BUILTIN, "built in")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        if ep.name in table:
            if table[ep.name] == ep.value:
                continue  # the same declaration twice (e.g. our own package metadata)
            raise DuplicateDriver(
                f"driver '{ep.name}' from {dist} ({ep.value}) is already registered "
                f"({origin[ep.name]}: {table[ep.name]}); rename one of them")
        table[ep.name] = ep.value
        origin[ep.name] = f"entry point of {dist}"
    return table


def driver_names() -> list[str]:
    return sorted(available())


@cache
def info(name: str) -> DriverInfo:
    """The declaration of the driver called ``name`` (its protocol library not loaded)."""
    table = available()
    target = table.get(name)
    if target is None:
        raise UnknownDriver(f"unknown driver '{name}' (known: {', '.join(sorted(table))})")
    obj = _import(target, f"driver '{name}'")
    if isinstance(obj, type) and issubclass(obj, Driver):
        try:
            found = DriverInfo.of(obj)
        except TypeError as exc:
            raise RegistryError(f"driver '{name}' ({target}): {exc}") from None
    elif isinstance(obj, DriverInfo):
        found = obj
    else:
        raise RegistryError(f"driver '{name}' ({target}) is not a drivers.base.Driver "
                            f"subclass or a drivers.base.DriverInfo")
    if found.name != name:
        raise RegistryError(f"driver '{name}' ({target}) calls itself '{found.name}'; "
                            f"register it under that name")
    for model in found.connection_models:
        if not (isinstance(model, type) and issubclass(model, ConnectionBase)):
            raise RegistryError(f"driver '{name}': connection model {model!r} is not a "
                                f"drivers.connection.ConnectionBase subclass")
        try:
            model.type_name()
        except TypeError as exc:
            raise RegistryError(f"driver '{name}': {exc}") from None
    return found


def infos() -> list[DriverInfo]:
    """Every driver's declaration: built-ins first, then entry points."""
    return [info(n) for n in available()]


@cache
def get_driver(name: str) -> type[Driver[Any, Any]]:
    """The driver class called ``name``, importing its module now if needed."""
    target = info(name).driver
    obj = target if isinstance(target, type) else _import(target, f"driver '{name}'")
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise RegistryError(f"driver '{name}' ({target}) is not a drivers.base.Driver subclass")
    return obj


def create_driver(name: str) -> Driver[Any, Any]:
    """A new instance of the driver called ``name`` with default options."""
    return get_driver(name)()


@cache
def _connection_table() -> dict[str, DriverInfo]:
    table: dict[str, DriverInfo] = {}
    protocols: dict[str, str] = {}
    for decl in infos():
        other_proto = protocols.setdefault(decl.protocol, decl.name)
        if other_proto != decl.name:
            raise DuplicateDriver(f"template protocol '{decl.protocol}' is declared by both "
                                  f"driver '{other_proto}' and driver '{decl.name}'")
        for conn_type in decl.connection_types:
            other = table.get(conn_type)
            if other is not None and other.name != decl.name:
                raise DuplicateDriver(f"connection type '{conn_type}' is served by both "
                                      f"driver '{other.name}' and driver '{decl.name}'")
            table[conn_type] = decl
    return table


def connection_types() -> list[str]:
    """Every ``connections[].type`` some driver serves."""
    return sorted(_connection_table())


def connection_models() -> tuple[type[ConnectionBase], ...]:
    """Every driver's connection models: the members of the config's connection union."""
    return tuple(m for decl in infos() for m in decl.connection_models)


def _serving(conn_type: str) -> DriverInfo:
    table = _connection_table()
    found = table.get(conn_type)
    if found is None:
        raise UnknownDriver(f"no driver serves connection type '{conn_type}' "
                            f"(known: {', '.join(sorted(table))})")
    return found


def driver_for_connection_type(conn_type: str) -> str:
    """The driver name that serves a config ``connections[].type`` (e.g. "modbus_tcp");
    two drivers claiming one type are refused."""
    return _serving(conn_type).name


def protocol_for_connection_type(conn_type: str) -> str:
    """The template protocol spoken over a connection type ("modbus_tcp" -> "modbus")."""
    return _serving(conn_type).protocol


def protocols() -> list[str]:
    return sorted({decl.protocol for decl in infos()})


@cache
def template_model(protocol: str) -> type[TemplateBase]:
    """The template model declared for ``protocol``; KeyError if no driver speaks it."""
    _connection_table()  # refuses two drivers declaring one protocol
    for decl in infos():
        if decl.protocol == protocol:
            target = decl.template_model
            model = target if isinstance(target, type) else _import(
                target, f"template model of driver '{decl.name}'")
            if not (isinstance(model, type) and issubclass(model, TemplateBase)):
                raise RegistryError(f"driver '{decl.name}': template model {target} is not "
                                    f"a drivers.template.TemplateBase subclass")
            return model
    raise KeyError(protocol)


def reset() -> None:
    """Forget discovered entry points and loaded classes (tests, plug-in installs)."""
    available.cache_clear()
    info.cache_clear()
    get_driver.cache_clear()
    _connection_table.cache_clear()
    template_model.cache_clear()
