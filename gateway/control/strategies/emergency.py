"""Emergency modes (highest priority): emergency stop, island, reconnection and black start.

- ``estop``: every battery, charger and PV inverter to zero, no battery grid-forming.
- ``island``: once the PCC reports open, every battery is commanded grid-forming and
  carries the site (its power setpoint is left at 0); EVs stop, except emergency vehicles;
  V2G cars may help; deferrable loads are shed, and essential ones too below
  ``island_shed_essential_soc_pct``: critical loads stay on as long as the energy lasts.
- ``reconnect`` / ``black_start``: staged by the mode machine (``site.stage``):
  -2/-1 everything off, 0 critical loads, 1 + essential, 2 + deferrable and PV, then normal
  (EVs and the battery wait for normal operation). Grid-forming: in reconnection until the
  PCC reports closed, then off; in a black start from the battery from stage -1 on (after
  the PCC opened and the loads were shed); never in a black start from the grid.
  (Batteries without a ``grid_forming`` point are simply not commanded.)
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
        pcc_open = site.pcc_open
        if mode == "estop":
            for b in site.batteries:
                d.battery_kw[b.id] = 0.0
            for c in site.chargers:
                d.ev_kw[c.id] = 0.0
            for pv in site.pvs:
                d.pv_limit_pct[pv.id] = 0.0
            for b in site.batteries:
                d.grid_forming[b.id] = False
            d.note(self.name, "emergency stop: generation and charging at zero")
            return
        if mode == "island":
            soc = min((b.soc_pct for b in site.batteries), default=0.0)
            keep = 1 if soc >= site.island_essential_soc_pct else 0
            for ld in site.loads:
                d.load_on[ld.id] = ld.rank <= keep
            for b in site.batteries:
                d.battery_kw[b.id] = 0.0
                if pcc_open:  # never form onto the grid side: the PCC opens first
                    d.grid_forming[b.id] = True
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
        stage = site.stage  # reconnect / black start
        for ld in site.loads:
            d.load_on[ld.id] = ld.rank <= stage
        for c in site.chargers:  # EVs wait for normal operation (and its grid limits)
            d.ev_kw[c.id] = 0.0
        from_battery = mode == "black_start" and site.source == "battery"
        for b in site.batteries:
            d.battery_kw[b.id] = 0.0
            if mode == "reconnect":  # carries the island until the PCC closes, then follows
                d.grid_forming[b.id] = pcc_open
            elif not from_battery:
                d.grid_forming[b.id] = False
            elif stage >= -1:
                d.grid_forming[b.id] = True
        for pv in site.pvs:
            d.pv_limit_pct[pv.id] = 100.0 if stage >= 2 else 0.0
        d.note(self.name, f"{mode}{' from the battery' if from_battery else ''}: stage {stage}")
