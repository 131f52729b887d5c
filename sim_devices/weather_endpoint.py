"""The simulator's day-ahead weather forecast, served like Open-Meteo on 127.0.0.1.

``GET /v1/forecast`` answers Open-Meteo's JSON (UTC, hourly ``temperature_2m``,
``shortwave_radiation`` as the mean of the preceding hour, ``wind_speed_10m``) for the
next 48 hours from the simulated clock's current hour. ``write_file`` writes the same
document for tests and sites without HTTP.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

from sim_devices.physics.weather import Weather
from sim_devices.physics.wx_forecast import forecast


def open_meteo_doc(weather: Weather, now_s: float, hours: int = 48) -> dict[str, Any]:
    """Open-Meteo forecast JSON for ``hours`` from the hour containing ``now_s``."""
    fc = forecast(weather, now_s, hours)
    ends = pd.DatetimeIndex(fc.index) + pd.Timedelta(hours=1)
    return {"latitude": weather.latitude, "longitude": weather.longitude,
            "utc_offset_seconds": 0, "timezone": "GMT", "timezone_abbreviation": "GMT",
            "hourly_units": {"time": "iso8601", "temperature_2m": "°C",
                             "shortwave_radiation": "W/m²", "wind_speed_10m": "m/s"},
            # radiation is the mean of the hour ending at each time; temperature at mid-hour
            # is given at the hour's end, an approximation a 1-hour grid can live with
            "hourly": {"time": [t.strftime("%Y-%m-%dT%H:%M") for t in ends],
                       "temperature_2m": [round(float(v), 2) for v in fc["temp_air_c"]],
                       "shortwave_radiation": [round(float(v), 1) for v in fc["ghi_w_m2"]],
                       "wind_speed_10m": [round(float(v), 2) for v in fc["wind_ms"]]}}


def write_file(path: Path, weather: Weather, now_s: float, hours: int = 48) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(open_meteo_doc(weather, now_s, hours)))
    tmp.replace(path)
    return path


class ForecastServer:
    """A small HTTP server (its own thread) on 127.0.0.1; port 0 picks a free port."""

    def __init__(self, weather: Weather, now: Callable[[], float], port: int = 0) -> None:
        weather_, now_ = weather, now

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.startswith("/v1/forecast"):
                    self.send_error(404, "only /v1/forecast is served here")
                    return
                body = json.dumps(open_meteo_doc(weather_, now_())).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="wx forecast",
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/forecast"

    def start(self) -> ForecastServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
