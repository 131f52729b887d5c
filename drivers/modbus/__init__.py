"""Modbus driver (pymodbus 3.x asyncio clients).

planner.py  coalesces a template's registers into few read requests
decoders.py per-point decoders compiled at attach (equal to drivers.codec.decode)
endpoint.py one shared, locked, reference-counted link per host:port or serial port,
            with our own capped reconnect backoff and error mapping
validity.py values that cannot be true (not implemented, out of range) as Invalid
device.py   ModbusDeviceIO: planned reads, read-back verified writes
driver.py   ModbusDriver: attach devices, close everything
"""

from drivers.base import DriverInfo
from drivers.modbus.connection import CONNECTION_MODELS

# What the registry reads without importing the protocol library (see drivers.registry).
DRIVER = DriverInfo(name="modbus", protocol="modbus", connection_models=CONNECTION_MODELS,
                    template_model="drivers.modbus.template:ModbusTemplate",
                    driver="drivers.modbus.driver:ModbusDriver")
