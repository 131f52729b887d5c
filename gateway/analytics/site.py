"""What analytics needs to know of a site: position, calendar country, PV arrays, targets."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.models import SiteConfig
from gateway.model import Nature

DEFAULT_LATITUDE = 52.52  # same defaults as the simulator when the config gives no position
DEFAULT_LONGITUDE = 13.40


@dataclass(frozen=True)
class PvArray:
    """One PV inverter's array: what a clear-sky expectation needs."""

    device_id: str
    kwp: float
    p_rated_kw: float
    tilt_deg: float
    azimuth_deg: float


@dataclass(frozen=True)
class SiteInfo:
    latitude: float = DEFAULT_LATITUDE
    longitude: float = DEFAULT_LONGITUDE
    timezone: str = "UTC"
    country: str = "DE"
    pv: tuple[PvArray, ...] = ()
    wind_ids: tuple[str, ...] = ()
    load_ids: tuple[str, ...] = ()  # loads and EV chargers (when no grid meter)
    bess_ids: tuple[str, ...] = ()
    grid_meter: str | None = None
    bess_kwh: dict[str, float] = field(default_factory=dict)  # rated capacity per battery

    @property
    def pv_kwp(self) -> float:
        return sum(a.kwp for a in self.pv)

    @property
    def targets(self) -> list[str]:
        """What is forecast: site load always, PV and wind where the site has them."""
        out = ["load"]
        if self.pv:
            out.append("pv")
        if self.wind_ids:
            out.append("wind")
        return out


def site_info(cfg: SiteConfig) -> SiteInfo:
    """SiteInfo from a site config (tilt/azimuth as the simulator assumes them)."""
    s = cfg.site
    lat = s.latitude if s.latitude is not None else DEFAULT_LATITUDE
    lon = s.longitude if s.longitude is not None else DEFAULT_LONGITUDE
    pv: list[PvArray] = []
    wind: list[str] = []
    loads: list[str] = []
    bess: list[str] = []
    bess_kwh: dict[str, float] = {}
    meters = [d for d in cfg.devices if d.nature is Nature.METER]
    grid = next((m.id for m in meters if m.role == "grid"), None)
    if grid is None and len(meters) == 1 and meters[0].role is None:
        grid = meters[0].id
    for d in cfg.devices:
        r = d.ratings
        if d.nature is Nature.PV_INVERTER:
            kwp = r.kwp or (r.p_max_kw * 1.1 if r.p_max_kw else 10.0)
            pv.append(PvArray(d.id, kwp, r.p_max_kw or kwp / 1.1, round(abs(lat) * 0.75, 1),
                              180.0 if lat >= 0 else 0.0))
        elif d.nature is Nature.WIND_TURBINE:
            wind.append(d.id)
        elif d.nature in (Nature.LOAD, Nature.EVSE):
            loads.append(d.id)
        elif d.nature is Nature.BESS:
            bess.append(d.id)
            bess_kwh[d.id] = r.capacity_kwh or 100.0
    return SiteInfo(lat, lon, s.timezone, s.country, tuple(pv), tuple(wind), tuple(loads),
                    tuple(bess), grid, bess_kwh)
