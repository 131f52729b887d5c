"""The Cluster screen's partition states from a `cluster_view` answer (the full screen
against real gateways and etcd is tests/test_console_cluster_e2e.py), and the standing
of a gateway in words."""

from __future__ import annotations

from typing import Any

from gateway.cluster.view import partition
from gateway.console.app import ConsoleApp
from tests.test_console_widgets import show, site_data

VIEW: dict[str, Any] = {
    "prefix": "/autogrid/x", "lease_ttl_s": 2.0, "reachable": True,
    "members": [{"gateway": "gw1", "client_url": "http://127.0.0.1:1", "up": True,
                 "version": "3.5.1", "raft_leader": "gw1"},
                {"gateway": "gw2", "client_url": "http://127.0.0.1:2", "up": False,
                 "error": "connection refused"}],
    "leader": None, "gateways": [{"gateway": "gw1", "alive": True, "lease_left_s": 1,
                                  "telemetry_age_s": 0.2, "devices": {"meter": "good"}}],
    "me": {"gateway": "gw1", "is_leader": False, "lease_age_s": 0.3,
           "keepalive_failures": 0},
    "owners": [{"device": "meter", "gateway": "gw2", "since": 5.0}], "control": None}


def test_partition_in_words() -> None:
    me = {"gateway": "gw1", "keepalive_failures": 0}
    assert partition(me, {"reachable": True, "leader": {"gateway": "gw2"}}) == "ok"
    assert partition(me, {"reachable": True, "leader": None}).startswith("NO LEADER")
    assert partition(me, {"reachable": False}).startswith("CUT OFF: no etcd member")
    cut = partition({**me, "keepalive_failures": 3}, {"reachable": True, "leader": None})
    assert cut.startswith("CUT OFF: gateway gw1 cannot renew its lease (3 keepalives")


def test_cluster_screen_shows_no_leader_cut_off_and_takeovers() -> None:
    d = site_data()
    d.commands["cluster_view"] = {"cmd": "cluster_view", "role": "viewer", "allowed": True}
    d.set_answer("cluster_view", {**VIEW, "partition": partition(VIEW["me"], VIEW)})
    app = ConsoleApp(d)
    text = show(app, "cluster", 80, 24)
    assert "State NO LEADER" in text and "Leader none" in text, text
    assert "DOWN connection refused" in text and "Takeovers (1)" in text, text
    assert "meter owned by gw2" in text, text
    me = {**VIEW["me"], "keepalive_failures": 2}
    d.set_answer("cluster_view", {**VIEW, "me": me, "partition": partition(me, VIEW)})
    app.refresh(force=True)
    assert "State CUT OFF: gateway gw1 cannot renew" in show(app, "cluster", 120, 40)


def test_cluster_screen_on_a_standalone_gateway_says_why_it_is_empty() -> None:
    text = show(ConsoleApp(site_data()), "cluster", 80, 24)
    assert "not available here (several gateways in a cluster" in text, text
