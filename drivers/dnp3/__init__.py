"""DNP3 master driver (IEEE 1815) on dnp3py, with what dnp3py's master lacks.

template.py  point maps as data: group, index, scale, event class, command objects
commands.py  CROB and float analog output (g41v3) blocks; per-object echoed status
link.py      one locked association per outstation: reconnect with capped backoff,
             integrity poll at (re)connect, class 1/2/3 polls at their own intervals,
             unsolicited responses
device.py    Dnp3DeviceIO: standard points from the link's data; checked commands
driver.py    Dnp3Driver: attach devices, share links, close everything
"""

from drivers.base import DriverInfo
from drivers.dnp3.connection import Dnp3Tcp

# What the registry reads without importing the protocol library (see drivers.registry).
DRIVER = DriverInfo(name="dnp3", protocol="dnp3", connection_models=(Dnp3Tcp,),
                    template_model="drivers.dnp3.template:Dnp3Template",
                    driver="drivers.dnp3.driver:Dnp3Driver")
