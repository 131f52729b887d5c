"""The alarm and audit store moved to gateway.alarms (a daemon service now); this name
stays for the control modules and tests that import it from here."""

from gateway.alarms import (  # noqa: F401
    MAX_DETAIL_BYTES,
    MAX_FIELD_CHARS,
    MAX_PAGE,
    SEVERITIES,
    Alarm,
    AlarmStore,
    ControlStore,
    bounded_detail,
)
