"""The site config schema (YAML), for site engineers. Unknown keys are errors."""

from __future__ import annotations

import functools
import importlib
import operator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationInfo,
    field_validator,
)
from pydantic_core import CoreSchema

from drivers import registry
from drivers.connection import ConnectionBase, Id, PositiveS
from drivers.library import SiteTemplates, TemplateLibrary
from drivers.template import TEMPLATE_DIR
from gateway.config.sections import default_of, section_type
from gateway.model import Nature


class _Connections:
    """The union of every registered driver's connection models, told apart by ``type``,
    built when the schema is (not at import)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler
                                     ) -> CoreSchema:
        members: Any = functools.reduce(operator.or_, registry.connection_models())
        return handler.generate_schema(Annotated[members, Field(discriminator="type")])


def connection_type() -> Any:
    return Annotated[Any, _Connections()]


if TYPE_CHECKING:
    from drivers.modbus.connection import (  # noqa: F401  (names kept importable from here)
        ModbusRtuOverTcp,
        ModbusSerial,
        ModbusTcp,
    )
    from gateway.analytics.config import AnalyticsSettings
    from gateway.apilimits import ApiSettings
    from gateway.apipolicy import ConsoleSettings
    from gateway.cluster.config import ClusterConfig
    from gateway.control.config import ControlConfig, DeviceControl
    from gateway.control.scheduler_config import SchedulerSettings, Tariff

    Connection = ConnectionBase
else:
    # Each feature's own model, resolved from gateway.config.sections when the schema is
    # first built: importing the config schema loads no feature.
    ControlConfig = section_type("control")
    DeviceControl = section_type("devices.control")
    Tariff = section_type("tariff")
    SchedulerSettings = section_type("scheduler")
    AnalyticsSettings = section_type("analytics")
    ConsoleSettings = section_type("console")
    ApiSettings = section_type("api")
    ClusterConfig = section_type("cluster")
    Connection = connection_type()

_MOVED = {"ModbusTcp", "ModbusRtuOverTcp", "ModbusSerial"}


def __getattr__(name: str) -> Any:
    """The Modbus connection models, now in drivers.modbus.connection, for older imports."""
    if name in _MOVED:
        return getattr(importlib.import_module("drivers.modbus.connection"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lazy(Strict):
    """A model whose schema is built on first use, so its feature sections load then."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class GridLimits(Strict):
    import_limit_kw: Annotated[float, Field(ge=0)] | None = None
    export_limit_kw: Annotated[float, Field(ge=0)] | None = None
    nominal_v: Annotated[float, Field(gt=0)] = 230.0
    nominal_f_hz: Literal[50, 60] = 50


class Site(Strict):
    name: str
    timezone: str = "UTC"
    country: Annotated[str, Field(min_length=2, max_length=2)] = "DE"
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None
    grid: GridLimits = Field(default_factory=GridLimits)


class Gateway(Strict):
    id: Id
    description: str = ""
    api_socket: Path | None = None  # default: <runtime dir>/autogrid-<id>.sock
    # endpoints' poll phases are put on a grid of this many seconds (0: no grid), so the
    # endpoints of one slot share the event loop's passes (see gateway.poller)
    poll_slot_s: Annotated[float, Field(ge=0, le=1)] = 0.02


class Ratings(Strict):
    """Nameplate values; setpoints are clamped to these."""

    p_max_kw: Annotated[float, Field(ge=0)] | None = None  # AC rating (generation or charge)
    p_charge_max_kw: Annotated[float, Field(ge=0)] | None = None
    p_discharge_max_kw: Annotated[float, Field(ge=0)] | None = None
    capacity_kwh: Annotated[float, Field(gt=0)] | None = None
    kwp: Annotated[float, Field(gt=0)] | None = None  # PV DC peak power
    i_max_a: Annotated[float, Field(gt=0)] | None = None
    v_nominal_v: Annotated[float, Field(gt=0)] | None = None


class Device(Lazy):
    id: Id
    nature: Nature
    template: str
    connection: str
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    poll_interval_s: Annotated[float, Field(ge=0.05, le=3600)] = 1.0
    gateway: str | None = None  # owning gateway; may be omitted when there is only one
    # Gateways that can reach this device too and take it over when its owner is gone
    # (needs a cluster; ownership is then a fenced key in the store).
    standby_gateways: list[str] = Field(default_factory=list)
    description: str = ""
    enabled: bool = True
    # Meters: "grid" measures the point of common coupling (site import/export), "sub" a
    # part of the site. Untagged meters count as "grid" when the site has only one meter.
    role: Literal["grid", "sub"] | None = None
    ratings: Ratings = Field(default_factory=Ratings)
    points: list[str] | None = None  # poll only these (default: all in the template)
    max_age_s: PositiveS | None = None  # a reading older than this is stale (default 3 polls)
    safe_setpoints: dict[str, float | bool] = Field(default_factory=dict)  # written on stop
    control: DeviceControl | None = None  # load priority, ramp, EV defaults (site control)


class Historian(Strict):
    enabled: bool = True
    path: Path = Path("autogrid-history.sqlite")
    retention_days: Annotated[float, Field(gt=0)] = 30.0
    flush_interval_s: PositiveS = 2.0
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    deadband_pct: Annotated[float, Field(ge=0, le=100)] = 0.0  # 0 = store every sample
    # flushes append to a staging table; its rows move into the keyed table this often,
    # or once this many are staged (what readers scan unindexed stays small)
    merge_interval_s: Annotated[float, Field(ge=1, le=3600)] = 120.0
    merge_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 500_000


class Logging(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    modules: dict[str, Literal["debug", "info", "warning", "error"]] = Field(default_factory=dict)


class Metrics(Strict):
    """Prometheus endpoint (http://host:port/metrics); loopback only unless allow_remote."""

    allow_remote: bool = False  # before host: the host check reads it
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9108

    @field_validator("host")
    @classmethod
    def _loopback(cls, host: str, info: ValidationInfo) -> str:
        import ipaddress

        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not info.data.get("allow_remote"):
            raise ValueError(f"metrics are served on loopback only (127.0.0.1, ::1); to serve "
                             f"them on '{host}' set allow_remote: true and firewall the port")
        return host


class TemplateDir(Strict):
    """A directory of the site's own templates (``templates:`` entries; a bare path is
    ``{path: ...}``). A relative path is taken from the config file's directory."""

    path: Path
    # Replace built-in templates of the same name: all of them (true) or these names.
    override: bool | list[str] = False


DEFAULT_TEMPLATE_DIR = Path("/etc/autogrid/templates")  # used, if it exists, when unset


class SiteConfig(Lazy):
    site: Site
    gateways: Annotated[list[Gateway], Field(min_length=1)]
    connections: list[Connection] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    # Directories of site templates; None = /etc/autogrid/templates if that exists.
    templates: list[TemplateDir] | None = None
    historian: Historian = Field(default_factory=Historian)
    logging: Logging = Field(default_factory=Logging)
    control: ControlConfig | None = None  # site control and protection; absent = monitor only
    metrics: Metrics | None = None  # off unless configured
    console: ConsoleSettings | None = None  # API roles/tokens; absent = root/daemon user only
    api: ApiSettings = Field(default_factory=default_of("api"))  # connection caps, token lockout
    tariff: Tariff | None = None  # time-of-use prices (scheduler, controller, simulate)
    scheduler: SchedulerSettings | None = None  # LP planning; on (defaults) when a tariff is set
    analytics: AnalyticsSettings | None = None  # schedules; absent = defaults (with historian)
    cluster: ClusterConfig | None = None  # several gateways as one; absent = standalone
    # Parameters for `autogrid sim` (physics, sessions, faults); the simulator's own section.
    simulation: dict[str, Any] | None = None

    @field_validator("templates", mode="before")
    @classmethod
    def _bare_paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

    def template_dirs(self) -> list[TemplateDir]:
        """The site template directories in force (the default one if it exists)."""
        if self.templates is not None:
            return list(self.templates)
        return [TemplateDir(path=DEFAULT_TEMPLATE_DIR)] if DEFAULT_TEMPLATE_DIR.is_dir() else []

    def template_library(self, builtin: Path | None = TEMPLATE_DIR) -> TemplateLibrary:
        """The built-in templates (``builtin``; None: none) plus the site's directories."""
        return TemplateLibrary([SiteTemplates(t.path, t.override) for t in self.template_dirs()],
                               builtin)

    def connection(self, conn_id: str) -> Connection:
        for c in self.connections:
            if c.id == conn_id:
                return c
        raise KeyError(conn_id)

    def devices_of(self, gateway_id: str) -> list[Device]:
        return [d for d in self.devices
                if d.enabled and (d.gateway or self.gateways[0].id) == gateway_id]


def rebuild_schema() -> None:
    """Build the schema again from the registry and the sections (after a driver package
    was installed into a running process, e.g. by a test)."""
    Device.model_rebuild(force=True)
    SiteConfig.model_rebuild(force=True)
