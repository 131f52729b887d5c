"""Protection margins: keep economics out of the backup reserve, and back a battery off
as its cells approach the protection temperature (linear derate over the last 5 degC)."""

from __future__ import annotations

from gateway.control.context import Decision, Site

DERATE_BAND_C = 5.0


class ProtectionMargins:
    name = "protection_margins"

    def enabled(self, site: Site) -> bool:
        return site.mode == "normal"

    def apply(self, site: Site, d: Decision) -> None:
        hot_limit = site.cell_temp_max_c
        temps = site.cell_temp_c
        for b in site.batteries:
            p = d.battery_kw.get(b.id, 0.0)
            if p > 0 and b.soc_pct <= site.reserve_soc_pct:
                d.battery_kw[b.id] = 0.0
                d.note(self.name, f"{b.id}: at reserve {site.reserve_soc_pct:.0f} %")
            t = temps.get(b.id)
            if isinstance(hot_limit, float) and isinstance(t, float) and \
                    t > hot_limit - DERATE_BAND_C:
                f = max(0.0, (hot_limit - t) / DERATE_BAND_C)
                d.battery_kw[b.id] = d.battery_kw.get(b.id, 0.0) * f
                d.note(self.name, f"{b.id}: hot ({t:.1f} degC), derated to {f:.0%}")
