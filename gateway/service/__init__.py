"""Running AutoGrid as a systemd service: sd_notify (ready, status, watchdog), reload on
SIGHUP, a bounded stop with safe setpoints, install/uninstall, Prometheus metrics."""
