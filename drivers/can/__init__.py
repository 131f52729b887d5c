"""The CAN driver: python-can buses, cantools DBC files for the meaning of frames.

- ``dbc``: DBC loading, signal decoders checked against cantools
- ``codegen``: one generated decode function per message (the hot path)
- ``template``: CAN templates (points -> DBC messages/signals, command frames)
- ``link``: one bus per connection, reader thread, reconnect task, loopback checks
- ``device``: one device's latest frames -> points, setpoints -> command frames
- ``driver``: the registry entry ``can`` (connection type ``can``)
"""
