"""The real console in tmux against `autogrid demo`, at 80x24 and 120x40: the header clock
(the simulated site clock) and key bar are whole, the Overview shows devices, active
alarms and the sparklines' scale, EV departures are in the site's zone, no tracker jargon,
an alarm's message is whole and opens on Enter, it is acknowledged once, Diagnostics keeps
counting, and `autogrid status` says the same mode, alarm count and site clock as the
console (parity)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_cli import run
from tests.test_console_e2e import TOKEN, Tmux, artifacts, demo  # noqa: F401  (fixtures)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_console_layout_and_status_parity(demo: Path, tmp_path: Path,  # noqa: F811
                                          artifacts: Path, size: tuple[int, int]  # noqa: F811
                                          ) -> None:
    cols, rows = size
    tm = Tmux(tmp_path, artifacts)
    try:
        tm.session = "operator"
        tm.start("operator", {"AUTOGRID_TOKEN": TOKEN})
        tm.tmux("resize-window", "-t", "operator", "-x", str(cols), "-y", str(rows))
        s = tm.wait_for("Site mode normal", "Active alarms 1", "CEST sim 60x", "q Quit ? Help",
                        "battery", "cell over temperature", save=f"overview-{cols}x{rows}")
        lines = s.rstrip("\n").split("\n")
        assert len(lines) <= rows and max(len(ln) for ln in lines) <= cols
        header = lines[0].rstrip()
        assert re.search(r"\d\d:\d\d:\d\d CEST sim 60x$", header), header
        assert lines[-1].rstrip().endswith("q Quit ? Help")
        # the Overview lists the devices with their health (all of them at 120x40; the
        # list scrolls at 80x24)
        for dev in (("battery", "ev_bay1") if rows < 40 else
                    ("battery", "ev_bay1", "ev_bay2", "ev_feeder", "grid_meter", "pv_roof",
                     "water_heater")):
            assert re.search(rf"good +{dev} ", s), dev

        # each power-flow row shows its sparkline's scale
        assert re.search(r"Grid .*\b0\.\.\d+", s) and "0..100" in s

        # status says what the console says (same words, same sources)
        st = run(["status", "--socket", str(demo)], tmp_path)
        assert st.returncode == 0, st.stderr
        assert "Site mode normal   Active alarms 1" in st.stdout
        assert "simulated at 60x real time" in st.stdout and "CEST" in st.stdout
        assert "cell over temperature" in st.stdout

        # an alarm opens on Enter, its whole message shown; nothing is acknowledged
        # EV departures on the site clock in the site's zone (ev_bay2 leaves 17:30 Berlin
        # time; this machine's zone may be another)
        tm.keys("4")
        tm.wait_until(lambda scr: re.search(r"^ev_bay2 .* 17:3\d:\d\d ", scr, re.M)
                      is not None, f"ev-{cols}x{rows}")
        tm.keys("5")
        s = tm.wait_for("Energy trading is not part of this gateway yet",
                        save=f"trading-{cols}x{rows}")
        assert "issue" not in s.lower()

        tm.keys("7")  # the whole message, wrapped at 80 columns, not cut
        tm.wait_for("critical", "cell over temperature", "zero sent to",
                    save=f"alarms-{cols}x{rows}")
        tm.keys("Enter")
        s = tm.wait_for("Alarm battery", "not acknowledged", "Enter/Esc: close",
                        save=f"alarm-detail-{cols}x{rows}")
        tm.keys("a")
        s = tm.wait_for("Done: acknowledge alarm", save=f"alarm-ack-{cols}x{rows}")
        tm.keys("a")
        tm.wait_for("already acknowledged by op-anna", save=f"alarm-ack-again-{cols}x{rows}")
        assert s.count("alarm_ack") <= 1

        # Diagnostics: polls keep counting between two looks
        tm.keys("8")
        first = tm.wait_for("grid_meter", "Latency", save=f"diag-{cols}x{rows}")

        def polls(screen: str) -> int:
            row = next(ln for ln in screen.splitlines() if ln.startswith("grid_meter"))
            return int(row.split("ms")[1].split()[0])

        n0 = polls(first)
        tm.wait_until(lambda scr: polls(scr) > n0, f"diag-later-{cols}x{rows}")
        tm.keys("q")
        tm.wait_for("CONSOLE-EXIT=0")
        err = (tmp_path / "operator.err").read_text()
        assert "Traceback" not in err, err
    finally:
        tm.kill()
