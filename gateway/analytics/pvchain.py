"""PV power from a day-ahead weather forecast through the PV chain, per quarter hour.

A GHI forecast's clear-sky index applied to a clear-sky PV curve treats the array as if it
lay flat: under cloud the diffuse share rises and a tilted array loses less than GHI says,
under a clear winter sky it gains more; hot hours lose to the cell temperature. So the
forecast is run through the chain a PV simulation uses: the forecast hour's clear-sky
index on the site's clear sky (simplified Solis, no data files) at each quarter, beam and
diffuse from Erbs (a clear sky keeps the clear-sky model's own split, which Erbs, fitted
on all skies, gets wrong), Hay-Davies transposition to each array's plane, cell
temperature from NOCT and the forecast air temperature, then DC and AC with the losses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pvlib

from gateway.analytics.site import SiteInfo

GAMMA_PER_C = -0.0035  # crystalline silicon power temperature coefficient
NOCT_RISE_C = 25.0  # cell above air at 800 W/m2 (NOCT 45 degC)
DERATE = 0.9 * 0.97  # system losses x inverter efficiency
KT_MAX = 1.0  # an hour's mean index: cloud enhancement does not survive an hour's average
CLEAR_FROM = 0.8  # index above which the clear sky's own beam/diffuse split takes over


def forecast_pv(idx: pd.DatetimeIndex, info: SiteInfo, ghi_fc: np.ndarray,
                temp_fc: np.ndarray | None = None) -> np.ndarray:
    """AC kW of the site's arrays at each quarter of ``idx`` from the forecast GHI (W/m2,
    the hour's mean, held over its quarters) and air temperature (degC; 25 when absent).
    NaN where the GHI forecast is missing."""
    ghi_fc = np.asarray(ghi_fc, dtype=float)
    if not info.pv:
        return np.where(np.isfinite(ghi_fc), 0.0, np.nan)
    mid = idx + pd.Timedelta(minutes=7.5)
    loc = pvlib.location.Location(info.latitude, info.longitude)
    sp = loc.get_solarposition(mid)
    zen = sp["apparent_zenith"].to_numpy(dtype=float)
    up = zen < 90
    cs = loc.get_clearsky(mid, model="simplified_solis", solar_position=sp)
    ghi_cs, dni_cs, dhi_cs = (np.where(up, np.nan_to_num(cs[k].to_numpy(dtype=float)), 0.0)
                              .clip(min=0.0) for k in ("ghi", "dni", "dhi"))
    hour_cs = pd.Series(ghi_cs).groupby(np.asarray(idx.floor("h").asi8)).transform(
        "mean").to_numpy()
    kt = np.clip(np.nan_to_num(ghi_fc) / np.maximum(hour_cs, 1.0), 0.0, KT_MAX)
    ghi = kt * ghi_cs
    doy = mid.day_of_year.to_numpy()
    parts = pvlib.irradiance.erbs(ghi, zen, doy)
    w = np.clip((kt - CLEAR_FROM) / (1.0 - CLEAR_FROM), 0.0, 1.0)
    dni = w * dni_cs * kt + (1.0 - w) * np.nan_to_num(np.asarray(parts["dni"], dtype=float))
    dhi = w * dhi_cs * kt + (1.0 - w) * np.nan_to_num(np.asarray(parts["dhi"], dtype=float))
    extra = np.asarray(pvlib.irradiance.get_extra_radiation(mid), dtype=float)
    air = np.full(len(idx), 25.0) if temp_fc is None else np.where(
        np.isfinite(temp_fc), temp_fc, 25.0)
    total = np.zeros(len(idx))
    for a in info.pv:
        irr = pvlib.irradiance.get_total_irradiance(
            a.tilt_deg, a.azimuth_deg, zen, sp["azimuth"].to_numpy(dtype=float), dni, ghi, dhi,
            dni_extra=extra, model="haydavies")
        poa = np.where(up, np.nan_to_num(np.asarray(irr["poa_global"], dtype=float)), 0.0)
        poa = poa.clip(min=0.0)
        cell = air + poa / 800.0 * NOCT_RISE_C
        dc = a.kwp * poa / 1000.0 * (1.0 + GAMMA_PER_C * (cell - 25.0)) * DERATE
        total += np.minimum(dc.clip(min=0.0), a.p_rated_kw)
    return np.where(np.isfinite(ghi_fc), total, np.nan)
