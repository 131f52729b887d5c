"""Emergency modes (highest priority): emergency stop, island, reconnection and black start.

- ``estop``: every battery, charger and PV inverter to zero.
- ``island``: the grid-forming battery carries the site (its setpoint is left at 0); EVs
  stop, except emergency vehicles; V2G cars may help; deferrable loads are shed, and
  essential ones too below ``island_shed_essential_soc_pct``: critical loads stay on as
  long as the energy lasts.
- ``reconnect`` / ``black_start``: staged by the mode machine (``memory['stage']``):
  0 everything off but critical loads, 1 + essential, 2 + deferrable and PV, then normal
  (EVs and the battery wait for normal operation).
"""

from __future__ import annotations

from gateway.control.context import Decision, Site
from gateway.control.strategies.v2g import v2g_room_kw


class EmergencyModes:
    name = "emergency"

    def enabled(self, site: Site) -> bool:
        return site.mode != "normal"

    def apply(self, site: Site, d: Decision) -> None:
        mode = site.mode
        if mode == "estop":
            for b in site.batteries:
                d.battery_kw[b.id] = 0.0
            for c in site.chargers:
                d.ev_kw[c.id] = 0.0
            for pv in site.pvs:
                d.pv_limit_pct[pv.id] = 0.0
            d.note(self.name, "emergency stop: generation and charging at zero")
            return
        if mode == "island":
            soc = min((b.soc_pct for b in site.batteries), default=0.0)
            keep = 1 if soc >= site.memory.get("island_essential_soc", 40.0) else 0
            for ld in site.loads:
                d.load_on[ld.id] = ld.rank <= keep
            for b in site.batteries:
                d.battery_kw[b.id] = 0.0
            for c in site.chargers:
                s = c.session
                emergency = s is not None and s.priority == "emergency" and keep == 1
                d.ev_kw[c.id] = min(d.ev_kw.get(c.id, 0.0), c.p_max_kw) if emergency else 0.0
                room = v2g_room_kw(site, c) if not emergency else 0.0
                if room > 0:
                    d.ev_kw[c.id] = -room
            for pv in site.pvs:
                d.pv_limit_pct[pv.id] = 100.0
            d.note(self.name, f"island: keeping {'critical+essential' if keep else 'critical'}"
                              f" loads (battery {soc:.0f} %)")
            return
        stage = int(site.memory.get("stage", 0))  # reconnect / black start
        for ld in site.loads:
            d.load_on[ld.id] = ld.rank <= stage
        for c in site.chargers:  # EVs wait for normal operation (and its grid limits)
            d.ev_kw[c.id] = 0.0
        for b in site.batteries:
            d.battery_kw[b.id] = 0.0
        for pv in site.pvs:
            d.pv_limit_pct[pv.id] = 100.0 if stage >= 2 else 0.0
        d.note(self.name, f"{mode}: stage {stage}")
