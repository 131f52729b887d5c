"""CAN templates and DBC files: compiled decoders agree with cantools, templates load,
mistakes are reported with positions, `autogrid check` validates CAN sites, and the
udp_multicast loopback guard refuses a route that leaves the machine."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from cantools.database.can import Signal

from drivers.can.dbc import compile_signal, decimals, load_dbc
from drivers.can.link import loopback_route_problem
from drivers.can.template import CanTemplate
from drivers.template import TEMPLATE_DIR, load_template, load_template_file, template_names
from gateway.config.loader import load_config
from gateway.model import Invalid
from gateway.yamlsrc import SourceError

REPO = Path(__file__).resolve().parent.parent
CAN_TEMPLATES = [n for n in template_names() if isinstance(load_template(n), CanTemplate)]


def test_can_templates_are_shipped() -> None:
    assert {"pylontech_bms_can", "dc_charger_can"} <= set(CAN_TEMPLATES)
    natures = {str(load_template(n).nature) for n in CAN_TEMPLATES}
    assert {"bms", "evse"} <= natures


@pytest.mark.parametrize("dbc", sorted(p.name for p in (TEMPLATE_DIR / "can").glob("*.dbc")))
def test_compiled_decoders_match_cantools(dbc: str) -> None:
    db = load_dbc((TEMPLATE_DIR / "can" / dbc).resolve())
    rng = random.Random(dbc)
    orders = set()
    for msg in db.messages:
        decoders = {s.name: compile_signal(msg, s) for s in msg.signals}
        for _ in range(200):
            data = bytes(rng.randrange(256) for _ in range(msg.length))
            ref = msg.decode(data, decode_choices=False, scaling=True)
            assert isinstance(ref, dict)
            for sig in msg.signals:
                orders.add(sig.byte_order)
                want = float(ref[sig.name])  # type: ignore[arg-type]
                assert decoders[sig.name](data) == pytest.approx(want, rel=1e-12, abs=1e-9), (
                    msg.name, sig.name, data.hex())
    assert orders  # every file exercised at least one byte order


def test_both_byte_orders_are_covered() -> None:
    orders = {s.byte_order for n in CAN_TEMPLATES
              for m in load_template(n).database.messages for s in m.signals}
    assert orders == {"little_endian", "big_endian"}


def test_decimals() -> None:
    assert decimals(0.1) == 1
    assert decimals(0.01, -273.15) == 2
    assert decimals(1, 0) == 0


def _write_template(tmp_path: Path, body: str, dbc: str = "can/pylontech_bms.dbc") -> Path:
    (tmp_path / "can").mkdir(exist_ok=True)
    (tmp_path / "can" / "pylontech_bms.dbc").write_text(
        (TEMPLATE_DIR / "can" / "pylontech_bms.dbc").read_text())
    path = tmp_path / "my_bms.yaml"
    path.write_text(f"protocol: can\nnature: bms\ndbc: {dbc}\npoints:\n{body}")
    return path


def test_template_dbc_names_checked_with_positions(tmp_path: Path) -> None:
    path = _write_template(tmp_path, (
        "  soc_pct: {message: BMS_SOC, signal: SOC}\n"
        "  soh_pct: {message: BMS_SOCX, signal: SOH}\n"
        "  v_pack_v: {message: BMS_Status, signal: PackVolts}\n"
        "  alarms: {message: BMS_Alarms, flags: [ProtectOverTemp, ModuleCount]}\n"))
    with pytest.raises(SourceError) as err:
        load_template_file(path)
    text = str(err.value)
    assert f"{path}:6:" in text and "message 'BMS_SOCX' is not in the DBC" in text
    assert f"{path}:7:" in text and "signal 'PackVolts' is not in message 'BMS_Status'" in text
    assert "flag 'ModuleCount' is 8 bits wide" in text
    assert "BMS_Limits" in text  # the known messages are listed


def test_template_missing_dbc_and_command_errors(tmp_path: Path) -> None:
    path = _write_template(tmp_path, "  soc_pct: {message: BMS_SOC, signal: SOC}\n",
                           dbc="can/nope.dbc")
    with pytest.raises(SourceError) as err:
        load_template_file(path)
    assert f"{path}:3:" in str(err.value) and "does not exist" in str(err.value)
    path = _write_template(tmp_path, (
        "  soc_pct:\n    message: BMS_SOC\n    signal: SOC\n"
        "    command: {message: EMS_LimitRequest, signal: ChargeCurrentRequest}\n"))
    with pytest.raises(SourceError) as err:
        load_template_file(path)
    assert "'soc_pct' is read-only in nature 'bms'" in str(err.value)
    path = _write_template(tmp_path, (
        "  i_charge_max_a:\n    message: BMS_Limits\n    signal: ChargeCurrentLimit\n"
        "    command: {message: EMS_LimitRequest, signal: ChargeRequest}\n"))
    with pytest.raises(SourceError) as err:
        load_template_file(path)
    assert f"{path}:8:" in str(err.value)
    assert "signal 'ChargeRequest' is not in message 'EMS_LimitRequest'" in str(err.value)


SITE = """\
site: {{name: can check}}
gateways: [{{id: gw}}]
connections:
  - {{id: bus, type: can, interface: slcan, channel: {channel}}}
devices:
  - {{id: bms1, nature: bms, template: pylontech_bms_can, connection: bus}}
  - {{id: bms2, nature: bms, template: pylontech_bms_can, connection: bus}}
  - {{id: ev1, nature: evse, template: dc_charger_can, connection: bus, unit_id: 1}}
  - {{id: ev2, nature: evse, template: dc_charger_can, connection: bus, unit_id: 2}}
historian: {{enabled: false}}
"""


def test_autogrid_check_reports_can_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(channel="ttyACM0"))
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    text = out.stdout + out.stderr
    assert f"{path}:4:" in text and "slcan needs a serial device path" in text
    assert f"{path}:7:" in text and "frame 0x351 (BMS_Limits)" in text and "bms1" in text
    assert "ev2" not in text  # unit 2 of a template with id_stride 1 has its own ids


def test_valid_can_site_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(channel=tmp_path / "can0").replace(
        "  - {id: bms2, nature: bms, template: pylontech_bms_can, connection: bus}\n", ""))
    loaded = load_config(path)
    conn = loaded.config.connection("bus")
    assert conn.type == "can" and conn.frame_timeout_s == 3.0


def test_udp_multicast_refused_unless_loopback_carries_it() -> None:
    leaving = "multicast 239.74.163.2 dev eth0 src 192.0.2.2 uid 0\n    cache <mc>"
    msg = loopback_route_problem("239.74.163.2", leaving, lo_flags=0x9)
    assert msg is not None
    assert "sudo ip link set lo multicast on" in msg
    assert "sudo ip route add 239.74.163.2/32 dev lo" in msg and "'eth0'" in msg
    on_lo = "multicast 239.74.163.2 dev lo src 127.0.0.1 uid 0"
    assert loopback_route_problem("239.74.163.2", on_lo, lo_flags=0x9 | 0x1000) is None
    assert "multicast on" in (loopback_route_problem("239.74.163.2", on_lo, 0x9) or "")
    v6 = loopback_route_problem("ff15::1", "multicast ff15::1 dev eth0 table local", 0x1009)
    assert v6 is not None and "sudo ip -6 route add ff15::1/128 dev lo" in v6
    assert "not a multicast" in (loopback_route_problem("10.0.0.1", "", 0) or "")
    # this machine, as it is: either loopback carries the default group, or we refuse
    live = loopback_route_problem("239.74.163.2")
    assert live is None or "sudo ip route add 239.74.163.2/32 dev lo" in live \
        or "multicast on" in live


def _cannot_be_true(sig: Signal, raw: int, phys: float) -> bool:
    """The oracle for the generated checks, from cantools' raw and scaled values: the
    J1939 patterns (unsigned: all ones, all ones minus one; signed: sign bit alone) of
    signals >= 2 bits outside their value table, or a value outside the DBC range."""
    if sig.length >= 2 and raw not in (sig.choices or {}):
        ones = (1 << sig.length) - 1
        if raw in ((-(1 << (sig.length - 1)),) if sig.is_signed else (ones, ones - 1)):
            return True
    step = abs(float(sig.scale)) / 2
    return ((sig.minimum is not None and phys < sig.minimum - step)
            or (sig.maximum is not None and phys > sig.maximum + step))


@pytest.mark.parametrize("template", CAN_TEMPLATES)
def test_generated_point_decoders_match_cantools(template: str) -> None:
    """The generated per-message code gives what cantools + the template's mapping give,
    and marks exactly the values that cannot be true as Invalid (with their value)."""
    from drivers.can.codegen import compile_message
    from gateway.model import NATURES, Kind

    tpl = load_template(template)
    rng = random.Random(template)
    kinds = NATURES[tpl.nature]
    invalid_seen = valid_seen = 0
    for msg in tpl.database.messages:
        pts = [(n, p, kinds[n].kind) for n, p in tpl.points.items() if p.message == msg.name]
        if not pts:
            continue
        dec = compile_message(msg, pts)
        payloads = [bytes(rng.randrange(256) for _ in range(msg.length)) for _ in range(300)]
        payloads += [b"\xff" * msg.length, b"\x00" * msg.length]
        for data in payloads:
            ref = msg.decode(data, decode_choices=False, scaling=True)
            raws = msg.decode(data, decode_choices=False, scaling=False)
            assert isinstance(ref, dict) and isinstance(raws, dict)
            all_ff = data == b"\xff" * msg.length
            got = dec(data)
            for name, pt, kind in pts:
                value = got[name]
                if pt.flags is not None:
                    want: object = sum(1 << i for i, f in enumerate(pt.flags) if ref[f])
                    if all_ff:
                        assert isinstance(value, Invalid) and value.raw == want
                        assert "all-0xFF" in value.why
                    else:
                        assert value == want
                    continue
                assert pt.signal is not None
                sig = msg.get_signal_by_name(pt.signal)
                phys = float(ref[pt.signal])  # type: ignore[arg-type]
                raw = int(raws[pt.signal])  # type: ignore[call-overload]
                choices = sig.choices or {}
                if kind is Kind.BOOL:
                    want = (phys != 0) != pt.invert
                elif kind is Kind.STR:
                    want = str(choices[int(phys)]) if int(phys) in choices else None
                else:
                    want = phys * pt.scale
                bad = all_ff or _cannot_be_true(sig, raw, phys) or want is None
                if bad:
                    invalid_seen += 1
                    assert isinstance(value, Invalid), (name, data.hex(), value)
                    shown = phys if kind is Kind.STR else want
                    assert value.raw == pytest.approx(shown, rel=1e-12, abs=1e-9)
                    continue
                valid_seen += 1
                assert not isinstance(value, Invalid), (name, data.hex(), value)
                if kind in (Kind.BOOL, Kind.STR):
                    assert value == want
                else:
                    assert value == pytest.approx(want, rel=1e-12, abs=1e-9)
    assert invalid_seen and valid_seen  # both branches were exercised


@pytest.mark.parametrize("template", CAN_TEMPLATES)
def test_every_read_signal_has_a_real_range(template: str) -> None:
    """Range checks need ranges: every signal a template reads has a DBC min/max narrower
    than what its bits carry (a range equal to the raw span checks nothing)."""
    tpl = load_template(template)
    for name, pt in tpl.points.items():
        if pt.message is None or pt.signal is None:
            continue
        sig = tpl.message(pt.message).get_signal_by_name(pt.signal)
        if sig.length == 1:
            continue
        assert sig.minimum is not None and sig.maximum is not None, name
        raw_hi = (1 << (sig.length - (1 if sig.is_signed else 0))) - 1
        top = raw_hi * float(sig.scale) + float(sig.offset)
        assert sig.maximum < top, (name, sig.maximum, top)
