"""Driver registry: built-in table, entry points, declarations read without the protocol
library, lazy driver import, loud failures."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import registry
from drivers._blueprint import BlueprintMemory, BlueprintTemplate
from drivers.base import Driver
from gateway.config.models import Device


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    registry.reset()
    yield
    registry.reset()


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: tuple[str, str]) -> None:
    """Make importlib.metadata report these (name, "module:Class") driver entry points."""
    entries = [importlib.metadata.EntryPoint(name=n, value=v, group=registry.ENTRY_POINT_GROUP)
               for n, v in eps]

    def entry_points(**kw: object) -> list[importlib.metadata.EntryPoint]:
        assert kw == {"group": registry.ENTRY_POINT_GROUP}
        return entries

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def plugin_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str,
                  conn_type: str = "acme_bus") -> None:
    """A plug-in driver module on sys.path, not yet imported."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""
        from typing import Literal
        from drivers.base import Driver
        from drivers.connection import ConnectionBase
        from drivers.modbus.template import ModbusTemplate

        class AcmeBus(ConnectionBase):
            type: Literal["{conn_type}"]

        class AcmeDriver(Driver):
            name = "acme"
            protocol = "acme"
            connection_models = (AcmeBus,)
            template_model = ModbusTemplate

            def attach(self, device, template, connection):
                raise NotImplementedError

            async def close(self):
                pass

        class NotADriver:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_builtin_modbus_driver_and_connection_types() -> None:
    cls = registry.get_driver("modbus")
    assert issubclass(cls, Driver)
    assert cls.__module__ == "drivers.modbus.driver"
    for conn_type in ("modbus_tcp", "modbus_rtu_over_tcp", "modbus_serial"):
        assert registry.driver_for_connection_type(conn_type) == "modbus"
        assert registry.protocol_for_connection_type(conn_type) == "modbus"
    assert cls.connection_types() == registry.info("modbus").connection_types
    assert isinstance(registry.create_driver("modbus"), cls)


def test_unknown_driver_names_it_and_lists_the_known_ones() -> None:
    with pytest.raises(registry.UnknownDriver) as err:
        registry.get_driver("dnp4")
    known = ", ".join(sorted(registry.BUILTIN))
    assert str(err.value) == f"unknown driver 'dnp4' (known: {known})"
    with pytest.raises(registry.UnknownDriver,
                       match=r"no driver serves connection type 'bus_x' \(known: .*"
                             r"modbus_rtu_over_tcp, modbus_serial, modbus_tcp"):
        registry.driver_for_connection_type("bus_x")


def test_importing_the_registry_imports_no_driver() -> None:
    code = textwrap.dedent("""
        import sys
        import drivers.registry as r
        assert "drivers.modbus.driver" not in sys.modules, "imported too early"
        assert "pymodbus" not in sys.modules, "pymodbus imported too early"
        assert r.driver_names() == sorted(r.BUILTIN)
        assert "modbus_tcp" in r.connection_types() and r.protocols() == ["can", "dnp3", "modbus"]
        for name in ("pymodbus", "can", "cantools", "dnp3py", "drivers.modbus.driver"):
            assert name not in sys.modules, f"reading the declarations imported {name}"
        r.get_driver("modbus")
        assert "drivers.modbus.driver" in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_entry_point_driver_is_imported_only_when_asked_for(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plugin_module(monkeypatch, tmp_path, "acme_lazy_plugin")
    fake_entry_points(monkeypatch, ("acme", "acme_lazy_plugin:AcmeDriver"))
    assert registry.driver_names() == sorted(["acme", *registry.BUILTIN])
    assert "acme_lazy_plugin" not in sys.modules
    cls = registry.get_driver("acme")
    assert "acme_lazy_plugin" in sys.modules
    assert cls.__name__ == "AcmeDriver" and issubclass(cls, Driver)
    assert registry.driver_for_connection_type("acme_bus") == "acme"
    assert registry.driver_for_connection_type("modbus_tcp") == "modbus"


def test_entry_point_reusing_a_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("modbus", "acme_plugin:AcmeDriver"))
    with pytest.raises(registry.DuplicateDriver,
                       match=r"driver 'modbus' from an installed package \(acme_plugin:"
                             r"AcmeDriver\) is already registered \(built in: "
                             r"drivers.modbus:DRIVER\)"):
        registry.get_driver("modbus")


def test_two_entry_points_with_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("acme", "a:AcmeDriver"), ("acme", "b:AcmeDriver"))
    with pytest.raises(registry.DuplicateDriver, match=r"driver 'acme' .* already registered"):
        registry.driver_names()


def test_the_same_class_declared_again_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("modbus", registry.BUILTIN["modbus"]))
    assert registry.driver_names() == sorted(registry.BUILTIN)


def test_two_drivers_claiming_one_connection_type_are_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plugin_module(monkeypatch, tmp_path, "acme_greedy_plugin", conn_type="modbus_tcp")
    fake_entry_points(monkeypatch, ("acme", "acme_greedy_plugin:AcmeDriver"))
    with pytest.raises(registry.DuplicateDriver,
                       match="connection type 'modbus_tcp' is served by both driver 'modbus' "
                             "and driver 'acme'"):
        registry.driver_for_connection_type("modbus_tcp")


def test_broken_entry_points_fail_with_the_target_named(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plugin_module(monkeypatch, tmp_path, "acme_broken_plugin")
    fake_entry_points(monkeypatch, ("gone", "acme_no_such_module:X"),
                      ("wrong", "acme_broken_plugin:NotADriver"))
    with pytest.raises(registry.RegistryError,
                       match=r"driver 'gone' \(acme_no_such_module:X\) cannot be loaded"):
        registry.get_driver("gone")
    with pytest.raises(registry.RegistryError, match=r"is not a drivers\.base\.Driver subclass "
                                                     r"or a drivers\.base\.DriverInfo"):
        registry.get_driver("wrong")


async def test_blueprint_driver_runs_through_an_entry_point(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("blueprint", "drivers._blueprint:BlueprintDriver"))
    assert registry.driver_for_connection_type("blueprint_memory") == "blueprint"
    driver = registry.create_driver("blueprint")
    assert registry.template_model("blueprint") is BlueprintTemplate
    tpl = BlueprintTemplate(nature="bess", points={  # type: ignore[arg-type]
        "soc_pct": {}, "p_set_kw": {"access": "rw"}})
    dev = Device(id="b1", nature="bess", template="x", connection="mem")  # type: ignore[arg-type]
    conn = BlueprintMemory(id="mem", type="blueprint_memory")
    io = driver.attach(dev, tpl, conn)
    assert await io.write("p_set_kw", 3.5) == 3.5
    assert await io.read() == {"soc_pct": None, "p_set_kw": 3.5}
    await driver.close()


def test_a_broken_plugin_is_one_line_from_check(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """A plug-in that cannot be loaded stops `check` with a line naming it, no traceback."""
    from gateway.config.loader import check_config

    fake_entry_points(monkeypatch, ("gone", "acme_no_such_module:DRIVER"))
    site = tmp_path / "site.yaml"
    site.write_text("site: {name: x}\ngateways: [{id: gw1}]\n", encoding="utf-8")
    (p,) = check_config(site)
    assert str(p) == (f"{site}: driver plug-ins: driver 'gone' (acme_no_such_module:DRIVER) "
                      f"cannot be loaded: No module named 'acme_no_such_module'")
