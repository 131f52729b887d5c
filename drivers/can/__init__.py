"""The CAN driver: python-can buses, cantools DBC files for the meaning of frames.

- ``dbc``: DBC loading, signal decoders checked against cantools
- ``codegen``: one generated decode function per message (the hot path)
- ``validity``: which decoded values cannot be true (DBC range, J1939 patterns) -> Invalid
- ``template``: CAN templates (points -> DBC messages/signals, command frames)
- ``link``: one bus per connection, reader thread, reconnect task, loopback checks
- ``slcan``: the slcan adapter read in bulk; unknown ids counted per id, never parsed
- ``device``: one device's latest frames -> points, setpoints -> command frames
- ``driver``: the registry entry ``can`` (connection type ``can``)
"""

from drivers.base import DriverInfo
from drivers.can.connection import CanConnection

# What the registry reads without importing the protocol library (see drivers.registry).
DRIVER = DriverInfo(name="can", protocol="can", connection_models=(CanConnection,),
                    template_model="drivers.can.template:CanTemplate",
                    driver="drivers.can.driver:CanDriver")
