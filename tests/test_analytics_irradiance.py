"""Reference irradiance is physically right at the site's own solar geometry (48 deg N)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pvlib

from sim_devices.physics.base import AcBus
from sim_devices.physics.pv import PvInverter
from sim_devices.physics.weather import Weather
from sim_devices.settings import PvSim, WeatherSettings

SITE = (47.99, 7.84, "Europe/Berlin")  # the demo site, Freiburg
TILT, AZ = 36.0, 180.0


def _weather(model: str) -> Weather:
    return Weather(*SITE, WeatherSettings(model=model), seed=1)  # type: ignore[arg-type]


def _geometry(ts: np.ndarray) -> tuple[pd.DatetimeIndex, pd.DataFrame, pd.DataFrame]:
    times = pd.DatetimeIndex(pd.to_datetime(ts, unit="s", utc=True))
    loc = pvlib.location.Location(SITE[0], SITE[1])
    sp = loc.get_solarposition(times)
    return times, sp, loc.get_clearsky(times, model="simplified_solis", solar_position=sp)


def test_tmy_poa_never_exceeds_the_sites_clear_sky() -> None:
    tmy, clear = _weather("tmy"), _weather("simplified_solis")
    t0 = pd.Timestamp("2025-01-01", tz="UTC").timestamp()
    days = range(0, 365, 5)  # every 5th day of the year, at 10-minute points
    ts = np.concatenate([np.arange(t0 + d * 86400, t0 + (d + 1) * 86400, 600.0) for d in days])
    poa = np.array([tmy.poa_w_m2(float(t), TILT, AZ) for t in ts])
    cs_poa = np.array([clear.poa_w_m2(float(t), TILT, AZ) for t in ts])
    _, sp, cs = _geometry(ts)
    aoi = pvlib.irradiance.aoi(TILT, AZ, sp["apparent_zenith"], sp["azimuth"]).to_numpy()
    ghi_cs = cs["ghi"].fillna(0.0).to_numpy()
    assert poa.max() > 800.0  # the TMY year has clear spring/summer noons
    beam = aoi < 60  # the sun well in front: the clear sky's beam dominates the array
    assert np.all(poa[beam] <= 1.1 * cs_poa[beam] + 1e-6), (poa - 1.1 * cs_poa)[beam].max()
    # At grazing or back-lit angles the array sees mostly sky light, and an overcast sky
    # can send more of that than a clear one, but never more than the clear sky's GHI.
    assert np.all(poa <= np.maximum(1.1 * cs_poa, ghi_cs) + 1e-6)


def test_december_noon_pv_at_48n_stays_below_the_physical_bound() -> None:
    inv = PvInverter("pv", AcBus(), _weather("tmy"), kwp=30.0, p_rated_kw=30.0,
                     sim=PvSim(tilt_deg=TILT, azimuth_deg=AZ))
    t0 = pd.Timestamp("2025-12-01", tz="Europe/Berlin").timestamp()
    ts = np.array([t0 + d * 86400 + h * 900.0 for d in range(31) for h in range(40, 60)])
    pv = np.array([inv.available_kw(float(t))[0] for t in ts])
    times, sp, cs = _geometry(ts)
    poa_cs = pvlib.irradiance.get_total_irradiance(
        TILT, AZ, sp["apparent_zenith"], sp["azimuth"], cs["dni"], cs["ghi"], cs["dhi"],
        dni_extra=pvlib.irradiance.get_extra_radiation(times), model="haydavies"
    )["poa_global"].fillna(0.0).to_numpy()
    # kWp x clear-sky POA / 1000, with no losses and a cell at -20 degC (+16 % on STC):
    # no December noon at 48 N can give more.
    bound = 30.0 * poa_cs / 1000.0 * (1.0 + 0.0035 * 45.0)
    assert np.all(pv <= bound), float((pv - bound).max())
    assert pv.max() < 25.0 and poa_cs.max() < 800.0  # the sun is < 19 deg high at noon
    assert pv.max() > 0.5 * bound.max()  # but clear December days do produce


def test_clear_summer_day_matches_pvlibs_pvwatts_chain() -> None:
    w = _weather("simplified_solis")
    inv = PvInverter("pv", AcBus(), w, kwp=30.0, p_rated_kw=30.0,
                     sim=PvSim(tilt_deg=TILT, azimuth_deg=AZ))
    t0 = pd.Timestamp("2025-06-21", tz="UTC").timestamp()
    ts = np.arange(t0, t0 + 86400, 300.0) + 150.0
    sim = np.array([inv.available_kw(float(t))[0] for t in ts])
    times, sp, cs = _geometry(ts)
    poa = pvlib.irradiance.get_total_irradiance(
        TILT, AZ, sp["apparent_zenith"], sp["azimuth"], cs["dni"], cs["ghi"], cs["dhi"],
        dni_extra=pvlib.irradiance.get_extra_radiation(times), model="haydavies"
    )["poa_global"].fillna(0.0).clip(lower=0.0)
    air = np.array([w.temp_air_c(float(t)) for t in ts])
    cell = pvlib.temperature.sapm_cell(
        poa, air, 1.0, **pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"][
            "open_rack_glass_polymer"])
    dc = pvlib.pvsystem.pvwatts_dc(poa, cell, 30.0, -0.0035) * 0.9  # 10 % system losses
    ac = np.clip(pvlib.inverter.pvwatts(dc, 30.0, eta_inv_nom=0.97), 0.0, None)
    e_sim, e_ref = sim.sum() / 12.0, float(np.sum(ac)) / 12.0
    assert e_ref > 150.0  # a long clear June day on 30 kWp
    assert abs(e_sim / e_ref - 1.0) < 0.03, (e_sim, e_ref)
    assert abs(sim.max() / float(np.max(ac)) - 1.0) < 0.03


def test_every_clear_sky_model_gives_beam_and_diffuse() -> None:
    """Haurwitz gives global irradiance only; the site still gets beam and diffuse."""
    noon = pd.Timestamp("2025-06-21 11:00", tz="UTC").timestamp()
    for model in ("haurwitz", "simplified_solis"):
        w = Weather(48.0, 11.0, "Europe/Berlin", WeatherSettings(model=model, cloudiness=0.0),
                    seed=1)
        assert w.poa_w_m2(noon, 30.0, 180.0) > 500.0, model
