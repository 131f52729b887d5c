"""The ``analytics.weather_feed`` section: checked by ``autogrid check`` like every other
section, each mistake at its own line and column with the field path."""

from __future__ import annotations

from pathlib import Path

from gateway.config.loader import check_config, load_config
from gateway.yamlsrc import Problem

SITE = """\
site:
  name: wx
  timezone: Europe/Berlin
gateways:
  - id: gw1
connections:
  - id: tcp
    type: modbus_tcp
    host: 127.0.0.1
    port: 15020
devices:
  - id: pv
    nature: pv_inverter
    template: sunspec_inverter
    connection: tcp
    unit_id: 1
historian:
  path: history.sqlite
analytics:
  weather_feed:
{feed}"""


def problems(tmp_path: Path, feed: str) -> list[Problem]:
    f = tmp_path / "site.yaml"
    f.write_text(SITE.format(feed=feed), encoding="utf-8")
    return check_config(f)


def only(found: list[Problem]) -> Problem:
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def test_a_good_feed_loads_with_its_settings(tmp_path: Path) -> None:
    feed = "    url: https://api.open-meteo.com/v1/forecast?timezone=GMT\n    refresh_s: 1800\n"
    assert problems(tmp_path, feed) == []
    cfg = load_config(tmp_path / "site.yaml").config
    assert cfg.analytics is not None and cfg.analytics.weather_feed is not None
    wf = cfg.analytics.weather_feed
    assert wf.source.startswith("https://") and wf.refresh_s == 1800 and wf.max_age_s == 21600
    assert problems(tmp_path, "    file: /var/lib/autogrid/forecast.json\n") == []


def test_a_url_that_is_not_http_is_refused_at_its_position(tmp_path: Path) -> None:
    p = only(problems(tmp_path, "    url: ftp://example.org/forecast\n"))
    assert (p.mark is not None and p.mark.line == 21 and p.mark.col == 10), str(p)
    assert p.path == "analytics.weather_feed.url"
    assert "must start with http:// or https:// (found 'ftp://example.org/forecast')" in (
        p.message)


def test_both_sources_neither_and_a_max_age_below_the_refresh(tmp_path: Path) -> None:
    p = only(problems(tmp_path, "    url: http://127.0.0.1:8080/v1/forecast\n"
                                "    file: forecast.json\n"))
    assert p.path == "analytics.weather_feed" and p.mark is not None and p.mark.line == 21
    assert "give exactly one of 'url' or 'file' (found both)" in p.message
    p = only(problems(tmp_path, "    refresh_s: 60\n"))
    assert "(found neither)" in p.message
    p = only(problems(tmp_path, "    file: f.json\n    refresh_s: 7200\n    max_age_s: 3600\n"))
    assert "max_age_s (3600) is shorter than refresh_s (7200)" in p.message


def test_unknown_keys_and_bad_numbers_are_named(tmp_path: Path) -> None:
    found = problems(tmp_path, "    file: f.json\n    refresh: 60\n    timeout_s: 0\n")
    by_path = {p.path: p for p in found}
    assert set(by_path) == {"analytics.weather_feed.refresh", "analytics.weather_feed.timeout_s"}
    assert by_path["analytics.weather_feed.refresh"].mark.line == 22  # type: ignore[union-attr]
    assert by_path["analytics.weather_feed.timeout_s"].mark.line == 23  # type: ignore[union-attr]
