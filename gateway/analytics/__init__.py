"""On-box analytics: load/PV forecasts, anomaly detection, battery health.

Modules, one concern each: ``site`` (what analytics needs to know of a site), ``data``
(historian -> 15-minute targets; a year of reference data from the physics), ``features``,
``forecast`` (models + ``Forecaster.predict``), ``backtest``, ``anomaly`` (detectors and
``Anomaly`` records), ``inject`` (ground-truth faults), ``battery_health``, ``service``
(training off the event loop, API commands), ``report`` (``autogrid forecast``).
"""
