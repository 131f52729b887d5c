"""A whole simulated site: builds the device models from a site config and steps them.

Each step: the grid and the PCC state decide whether the bus is energized (grid, an
island formed by a battery commanded grid-forming that has energy, or a blackout). An
island that cannot be carried collapses and its batteries drop out of grid-forming; it
comes back (black start) when a battery with energy is commanded grid-forming again, even
while the grid is still down. Generation and loads step
first, then batteries (a grid-forming one balances an island), then meters (the power
balance, + = import) and breakers.
"""

from __future__ import annotations

import math
import time

from gateway.config.models import Device, SiteConfig
from gateway.model import Nature, PointValue
from sim_devices.clock import Clock, ManualClock, SimClock
from sim_devices.physics.base import AcBus, SimModel, model_rng
from sim_devices.physics.battery import Battery, Bms, Pack
from sim_devices.physics.evse import Evse
from sim_devices.physics.grid import Breaker, Grid, Meter
from sim_devices.physics.load import Load
from sim_devices.physics.profiles import LoadProfile
from sim_devices.physics.pv import PvInverter
from sim_devices.physics.weather import Weather
from sim_devices.physics.wind import WindTurbine
from sim_devices.settings import (
    BatterySim,
    BmsSim,
    BreakerSim,
    EvseSim,
    LoadSim,
    MeterSim,
    PvSim,
    SimulationSettings,
    WindSim,
    load_simulation_settings,
)

DEFAULT_LATITUDE = 52.52  # Berlin, when the site config gives no position
DEFAULT_LONGITUDE = 13.40
DEFAULT_LOAD_KWH = 50_000.0
ISLAND_TOLERANCE_KW = 1e-6


class SimSite:
    """All simulated devices of one site, on one clock."""

    def __init__(self, cfg: SiteConfig, settings: SimulationSettings | None = None,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.settings = settings if settings is not None else load_simulation_settings(cfg)
        s = self.settings
        self.clock: Clock = clock if clock is not None else SimClock(s.clock.start, s.clock.speed)
        self.max_step_s = s.clock.max_step_s
        site = cfg.site
        lat = site.latitude if site.latitude is not None else DEFAULT_LATITUDE
        lon = site.longitude if site.longitude is not None else DEFAULT_LONGITUDE
        self.timezone = site.timezone
        self.weather = Weather(lat, lon, site.timezone, s.weather, s.seed)
        self.bus = AcBus(site.grid.nominal_v, float(site.grid.nominal_f_hz),
                         site.grid.nominal_v, float(site.grid.nominal_f_hz), True)
        self.grid = Grid(site.grid.nominal_v, float(site.grid.nominal_f_hz),
                         model_rng(s.seed, "__grid__"))
        # feeder breakers: each supplies its devices through a bus of its own, live only
        # while the feeder is closed and the site's bus is live
        self._feeder_bus: dict[str, AcBus] = {}
        self._fed_by: dict[str, str] = {}
        for dev in cfg.devices:
            if dev.nature is Nature.BREAKER:
                for fed in s.device(dev.id, BreakerSim).supplies:
                    self._fed_by[fed] = dev.id
                    self._feeder_bus.setdefault(dev.id, AcBus(**vars(self.bus)))
        self.models: dict[str, SimModel] = {}
        for dev in cfg.devices:
            if dev.nature is not Nature.BMS:
                self.models[dev.id] = self._build(dev)
        for dev in cfg.devices:  # a BMS watches a battery's pack, so batteries come first
            if dev.nature is Nature.BMS:
                self.models[dev.id] = self._build_bms(dev)
        self.models = {d.id: self.models[d.id] for d in cfg.devices}  # config order
        self.background: Load | None = None
        if s.background_load is not None:
            self.background = Load("__background__", self.bus,
                                   self._profile(s.background_load, None),
                                   model_rng(s.seed, "__background__"), s.background_load)
        ms = list(self.models.values())
        self._sources = [m for m in ms if not isinstance(m, Battery | Meter | Breaker)]
        self._batteries = [m for m in ms if isinstance(m, Battery)]
        self._meters = [m for m in ms if isinstance(m, Meter)]
        breakers = [m for m in ms if isinstance(m, Breaker)]
        self._breakers = [b for b in breakers if b.device_id not in self._feeder_bus]
        self._feeders = [b for b in breakers if b.device_id in self._feeder_bus]
        self.now_s = self.clock.now()

    # --- construction ----------------------------------------------------------------------
    def _build(self, dev: Device) -> SimModel:
        s, r = self.settings, dev.ratings
        feeder = self._fed_by.get(dev.id)
        bus = self._feeder_bus[feeder] if feeder is not None else self.bus
        rng = model_rng(s.seed, dev.id)
        if dev.nature is Nature.PV_INVERTER:
            kwp = r.kwp or (r.p_max_kw * 1.1 if r.p_max_kw else 10.0)
            return PvInverter(dev.id, bus, self.weather, kwp, r.p_max_kw or kwp / 1.1,
                              s.device(dev.id, PvSim))
        if dev.nature is Nature.WIND_TURBINE:
            return WindTurbine(dev.id, bus, self.weather, r.p_max_kw or 100.0, rng,
                               s.device(dev.id, WindSim))
        if dev.nature is Nature.BESS:
            return Battery(dev.id, bus, self._pack(dev))
        if dev.nature is Nature.EVSE:
            return Evse(dev.id, bus, r.p_max_kw or 11.0, self.timezone, s.seed,
                        s.device(dev.id, EvseSim))
        if dev.nature is Nature.LOAD:
            ls: LoadSim = s.device(dev.id, LoadSim)
            return Load(dev.id, bus, self._profile(ls, r.p_max_kw), rng, ls)
        if dev.nature is Nature.METER:
            ms: MeterSim = s.device(dev.id, MeterSim)
            return Meter(dev.id, bus, self.grid, rng, ms.side, ms.power_factor, ms.measures)
        if dev.nature is Nature.BREAKER:
            bs: BreakerSim = s.device(dev.id, BreakerSim)
            return Breaker(dev.id, bus, r.i_max_a, bs.initially_closed)
        raise ValueError(f"device '{dev.id}': no simulation for nature {dev.nature}")

    def _pack(self, dev: Device) -> Pack:
        r = dev.ratings
        cap = r.capacity_kwh or 100.0
        pc = r.p_charge_max_kw or r.p_max_kw or cap * 0.5
        pd_ = r.p_discharge_max_kw or r.p_max_kw or cap * 0.5
        return Pack(cap, pc, pd_, self.settings.device(dev.id, BatterySim), self.weather,
                    r.v_nominal_v)

    def _build_bms(self, dev: Device) -> Bms:
        bs: BmsSim = self.settings.device(dev.id, BmsSim)
        target = bs.battery or next(
            (d.id for d in self.cfg.devices if d.nature is Nature.BESS), None)
        bat = self.models.get(target) if target else None
        if isinstance(bat, Battery):
            return Bms(dev.id, self.bus, bat.pack)
        bms = Bms(dev.id, self.bus, self._pack(dev))
        bms.own_pack()
        return bms

    def _profile(self, ls: LoadSim, p_max_kw: float | None) -> LoadProfile:
        if ls.profile == "constant":
            return LoadProfile("constant", self.timezone,
                               p_kw=ls.p_kw if ls.p_kw is not None else (p_max_kw or 10.0))
        prof = LoadProfile(ls.profile, self.timezone)
        if ls.annual_kwh is not None:
            prof.annual_kwh = ls.annual_kwh
        elif p_max_kw:  # size so that the profile's peak is 80 % of the rating
            prof.annual_kwh = 0.8 * p_max_kw / prof.peak_per_kwh()
        else:
            prof.annual_kwh = DEFAULT_LOAD_KWH
        return prof

    # --- grid and time -----------------------------------------------------------------------
    @property
    def grid_available(self) -> bool:
        return self.grid.available

    def set_grid(self, available: bool) -> None:
        """Lose (False) or restore (True) the utility grid."""
        self.grid.available = available

    @property
    def connected(self) -> bool:
        """Grid present and every PCC breaker closed (feeder breakers aside)."""
        return self.grid.available and all(b.closed for b in self._breakers)

    def step(self, dt_s: float | None = None) -> None:
        """Advance the physics: by the clock's elapsed time (None) or by ``dt_s``.

        ``now_s`` is the physics time. With an explicit ``dt_s`` it moves by exactly that
        (a ManualClock is moved along). Long steps are split into pieces of at most
        ``clock.max_step_s`` so the integration stays accurate.
        """
        if dt_s is None:
            dt = self.clock.now() - self.now_s
        else:
            dt = float(dt_s)
            if isinstance(self.clock, ManualClock):
                self.clock.set(max(self.clock.now(), self.now_s + dt))
        if dt <= 0:
            return
        n = max(1, math.ceil(dt / self.max_step_s - 1e-9))
        piece = dt / n
        for _ in range(n):
            self.now_s += piece
            self._step_once(self.now_s, piece)

    def _step_once(self, now: float, dt: float) -> None:
        self.grid.step(dt)
        connected = self.connected
        formers = [b for b in self._batteries if b.forming]
        bus = self.bus
        bus.energized = connected or bool(formers)
        if connected:
            bus.v_v, bus.f_hz = self.grid.v_v, self.grid.f_hz
        elif bus.energized:  # island formed by batteries: nominal values, small wander
            bus.v_v = bus.nominal_v * (1 + self.grid._dv)
            bus.f_hz = bus.nominal_f_hz + self.grid._df
        else:
            bus.v_v = bus.f_hz = 0.0
        for br in self._feeders:
            fb = self._feeder_bus[br.device_id]
            fb.energized = bus.energized and br.closed
            fb.v_v, fb.f_hz = (bus.v_v, bus.f_hz) if fb.energized else (0.0, 0.0)
        for m in self._sources:
            m.step(now, dt)
        if self.background is not None:
            self.background.step(now, dt)
        island = not connected and bus.energized
        for b in self._batteries:
            b.island_target_kw = None
            if not (island and b in formers):
                b.step(now, dt)
        if island:
            self._balance_island(formers, now, dt)
        flow = self.balance_kw() if connected else 0.0
        for mt in self._meters:
            mt.flow_kw = (flow if mt.measures is None
                          else sum(self.models[i].consumption_kw() for i in mt.measures))
            mt.step(now, dt)
        v = self.grid.v_v
        i_pcc = abs(flow) * 1000.0 / (3.0 * v) if v > 0 else 0.0
        for br in self._breakers:
            br.i_a = i_pcc
            br.step(now, dt)
        for br in self._feeders:
            fed = [m for i, m in self.models.items() if self._fed_by.get(i) == br.device_id]
            load_kw = abs(sum(m.consumption_kw() for m in fed))
            br.i_a = load_kw * 1000.0 / (3.0 * bus.v_v) if bus.v_v > 0 else 0.0
            br.step(now, dt)

    def _balance_island(self, formers: list[Battery], now: float, dt: float) -> None:
        """Grid-forming batteries cover the island's net load; surplus curtails generation."""
        net = self.balance_kw(exclude=formers)
        rated = sum(max(f.pack.p_discharge_rated_kw, 1e-9) for f in formers)
        for f in formers:
            f.island_target_kw = net * max(f.pack.p_discharge_rated_kw, 1e-9) / rated
            f.step(now, dt)
        missing = net - sum(f.p_kw for f in formers)
        if missing > ISLAND_TOLERANCE_KW:  # cannot carry the load: the island collapses
            for f in formers:
                f.trip_forming()
        elif missing < -ISLAND_TOLERANCE_KW:  # cannot absorb: generators back off
            gens = [m for m in self._sources if isinstance(m, PvInverter | WindTurbine)]
            produced = sum(g.p_kw for g in gens)
            if produced > 0:
                keep = max(0.0, 1.0 + missing / produced)
                for g in gens:
                    g.reduce_to(g.p_kw * keep, dt)

    def balance_kw(self, exclude: list[Battery] | None = None) -> float:
        """Net consumption behind the PCC (+ = the site draws power), i.e. grid import."""
        total = sum(m.consumption_kw() for m in self.models.values()
                    if not (exclude and m in exclude))
        if self.background is not None:
            total += self.background.consumption_kw()
        return total

    # --- access for protocol servers -----------------------------------------------------------
    def read(self, device_id: str) -> dict[str, PointValue]:
        return self.models[device_id].read_points()

    def write(self, device_id: str, point: str, value: PointValue,
              wall_s: float | None = None) -> PointValue:
        """A write from the gateway: applied, and counted as communication for the watchdog."""
        model = self.models[device_id]
        accepted = model.write_point(point, value)
        model.note_comm_write(time.monotonic() if wall_s is None else wall_s)
        return accepted

    def check_watchdogs(self, wall_s: float | None = None) -> list[str]:
        """Apply safe defaults on every device whose watchdog expired; their ids."""
        now = time.monotonic() if wall_s is None else wall_s
        return [i for i, m in self.models.items() if m.check_watchdog(now)]
