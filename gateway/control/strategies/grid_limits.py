"""Grid limits (hard). Import over the limit: battery (reserve may be used), then EVs in
reverse priority (public, fleet, emergency last; most slack first), then V2G, then load
shedding (deferrable, then essential; critical never). Export over the limit: battery
charges, then PV is curtailed. Shed loads come back one at a time, most important first,
when there is room for them plus a hysteresis for ``restore_delay_s``; curtailment is
lifted step by step the same way. Its section is ``grid_limits`` (``pv_curtailment``);
shedding and restoring follow ``load_shedding`` (off: no load is shed for the limit, those
already shed still come back)."""

from __future__ import annotations

from gateway.control.context import Decision, Site, battery_room, predicted_grid, spread
from gateway.control.strategies.grid_limits_config import GridLimitsConfig
from gateway.control.strategies.load_shedding_config import LoadSheddingConfig
from gateway.control.strategies.v2g import discharge_cars

CURTAIL_RELEASE_PCT = 10.0  # per cycle, once there is room
CURTAIL_MARGIN_KW = 1.0


class GridLimits:
    name = "grid_limits"

    def __init__(self, cfg: GridLimitsConfig, shedding: LoadSheddingConfig) -> None:
        self.cfg = cfg
        self.shedding = shedding

    def enabled(self, site: Site) -> bool:
        return self.cfg.enabled and site.mode == "normal"

    def apply(self, site: Site, d: Decision) -> None:
        shed = site.memory.shed
        for ld in site.loads:
            d.load_on[ld.id] = ld.id not in shed
        if site.grid_kw is None:
            if site.import_limit_kw is not None:  # cannot prove the limit holds: no EVs
                for c in site.chargers:
                    d.ev_kw[c.id] = min(0.0, d.ev_kw.get(c.id, 0.0))
            d.note(self.name, "no PCC reading: EV charging held, nothing restored")
            return
        if site.import_limit_kw is not None:
            self._import(site, d, site.import_limit_kw, shed)
        self._export(site, d)

    def _import(self, site: Site, d: Decision, limit: float, shed: list[str]) -> None:
        g = predicted_grid(site, d)
        assert g is not None
        over = g - limit
        if over > 0:
            for k, v in spread(battery_room(site, d, True, reserve=False), over).items():
                d.battery_kw[k] = d.battery_kw.get(k, 0.0) + v
                over -= v
            over = self._cut_evs(site, d, over)
            if over > 1e-9:
                over -= discharge_cars(site, d.ev_kw, over)
            for ld in sorted(site.loads, key=lambda x: -x.rank):
                if over <= 1e-9 or not self.shedding.enabled:
                    break
                if ld.priority == "critical" or not d.load_on.get(ld.id, True):
                    continue
                d.load_on[ld.id] = False
                shed.append(ld.id)
                over -= ld.p_kw
                site.memory.restore_since = None
                d.note(self.name, f"shed {ld.id} ({ld.priority})")
            return
        if not shed:
            return
        nxt = min((ld for ld in site.loads if ld.id in shed), key=lambda x: x.rank,
                  default=None)
        if nxt is None:
            shed.clear()
            return
        if g + nxt.p_on_kw < limit - self.shedding.restore_hysteresis_kw:
            if site.memory.restore_since is None:
                site.memory.restore_since = site.now
            since = site.memory.restore_since
            if site.now - since >= self.shedding.restore_delay_s:
                shed.remove(nxt.id)
                d.load_on[nxt.id] = True
                site.memory.restore_since = None
                d.note(self.name, f"restored {nxt.id}")
        else:
            site.memory.restore_since = None

    def _cut_evs(self, site: Site, d: Decision, over: float) -> float:
        """Lower EV charging in reverse priority (public first, most slack first); cars
        alike (same class, same slack) give up the same share of their power."""
        groups: dict[tuple[int, float], list[str]] = {}
        for c in site.chargers:
            if d.ev_kw.get(c.id, 0.0) > 0 and c.session is not None:
                key = (c.session.rank(), round(c.session.laxity_h(site.now, c.p_max_kw), 1))
                groups.setdefault(key, []).append(c.id)
        for key in sorted(groups, key=lambda k: (-k[0], -k[1])):
            if over <= 1e-9:
                break
            total = sum(d.ev_kw[i] for i in groups[key])
            f = min(1.0, over / total)
            for i in groups[key]:
                d.ev_kw[i] -= d.ev_kw[i] * f
            over -= total * f
        return over

    def _export(self, site: Site, d: Decision) -> None:
        curtail = site.memory.curtail
        for pv in site.pvs:
            d.pv_limit_pct[pv.id] = curtail.get(pv.id, 100.0)
        limit = site.export_limit_kw
        if limit is None:
            curtail.clear()
            return
        g = predicted_grid(site, d)
        assert g is not None
        over = -g - limit
        if over > 0:
            for k, v in spread(battery_room(site, d, False), over).items():
                d.battery_kw[k] = d.battery_kw.get(k, 0.0) - v
                over -= v
        if over > 0 and self.cfg.pv_curtailment and site.pvs:
            produced = sum(pv.p_kw for pv in site.pvs)
            for pv in site.pvs:
                share = over * (pv.p_kw / produced if produced > 0 else 1 / len(site.pvs))
                new = max(0.0, (min(pv.p_kw, d.pv_limit_pct[pv.id] / 100 * pv.rated_kw)
                                - share) / max(pv.rated_kw, 1e-9) * 100.0)
                d.pv_limit_pct[pv.id] = curtail[pv.id] = new
            d.note(self.name, f"curtailing PV by {over:.1f} kW")
        elif over < -CURTAIL_MARGIN_KW:
            for pv in site.pvs:
                if pv.id in curtail:
                    up = curtail[pv.id] + CURTAIL_RELEASE_PCT
                    if up >= 100.0:
                        del curtail[pv.id]
                        d.pv_limit_pct[pv.id] = 100.0
                    else:
                        d.pv_limit_pct[pv.id] = curtail[pv.id] = up
