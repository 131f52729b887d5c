"""Device physics for the simulated site (no protocol code here)."""

from sim_devices.physics.base import AcBus, SimModel
from sim_devices.physics.battery import Battery, Bms, Pack
from sim_devices.physics.evse import Evse, Session
from sim_devices.physics.grid import Breaker, Grid, Meter
from sim_devices.physics.load import Load
from sim_devices.physics.profiles import LoadProfile
from sim_devices.physics.pv import PvInverter
from sim_devices.physics.site import SimSite
from sim_devices.physics.weather import Weather
from sim_devices.physics.wind import WindTurbine

__all__ = ["AcBus", "Battery", "Bms", "Breaker", "Evse", "Grid", "Load", "LoadProfile",
           "Meter", "Pack", "PvInverter", "Session", "SimModel", "SimSite", "Weather",
           "WindTurbine"]
