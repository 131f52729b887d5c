"""The unit files as systemd sees them (systemd-analyze verify / security), and
`autogrid install` / `uninstall` into a temporary root with the real systemd tools."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_cli import run

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(Debian package systemd; .ci/run installs it)")
MAX_EXPOSURE = 2.5


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    r = run(["install", "--root", str(root)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


@needs_analyze
def test_units_verify(installed: Path) -> None:
    units = installed / "etc/systemd/system"
    # An instance is verified through a copy named like the instance.
    shutil.copyfile(units / "autogrid@.service", units / "autogrid@gw2.service")
    for unit in ("autogrid.service", "autogrid@gw2.service"):
        r = subprocess.run([ANALYZE or "", "verify", str(units / unit)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "autogrid" not in r.stdout + r.stderr, r.stdout + r.stderr  # not one warning


@needs_analyze
@pytest.mark.parametrize("unit", ["autogrid.service", "autogrid@.service"])
def test_security_exposure_is_ok(unit: str) -> None:
    r = subprocess.run([ANALYZE or "", "security", "--offline=true", "--no-pager",
                        str(REPO / "systemd" / unit)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    score, verdict = float(m.group(1)), m.group(2)
    print(f"{unit}: exposure {score} {verdict}")
    assert score <= MAX_EXPOSURE and verdict in ("OK", "SAFE"), r.stdout


@pytest.mark.parametrize("unit", ["autogrid.service", "autogrid@.service"])
def test_unit_has_the_service_essentials(unit: str) -> None:
    text = (REPO / "systemd" / unit).read_text()
    for line in ("Type=notify", "LimitNOFILE=8192\n", "WatchdogSec=", "Restart=on-failure",
                 "User=autogrid",
                 "StateDirectory=autogrid", "RuntimeDirectory=autogrid",
                 "ConfigurationDirectory=autogrid", "ExecStartPre=", "ExecReload=",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_CAN AF_NETLINK",
                 "SystemCallFilter=@system-service"):
        assert line in text, line


def test_install_and_uninstall_into_a_root(installed: Path, tmp_path: Path) -> None:
    etc = installed / "etc"
    unit = (etc / "systemd/system/autogrid.service").read_text()
    exe = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert exe and Path(exe.group(1)).exists()  # the autogrid this was installed from
    assert "/opt/autogrid" not in unit
    assert (etc / "sysusers.d/autogrid.conf").is_file()
    assert (etc / "tmpfiles.d/autogrid.conf").is_file()
    site = etc / "autogrid/site.yaml"
    assert site.is_file()
    assert run(["check", str(site)], tmp_path).returncode == 0
    if shutil.which("systemd-sysusers"):
        assert re.search(r"^autogrid:x:\d+:\d+:", (etc / "passwd").read_text(), re.M)
    if shutil.which("systemctl"):
        assert (etc / "systemd/system/multi-user.target.wants/autogrid.service").is_symlink()
    if shutil.which("systemd-tmpfiles"):
        assert (installed / "run/autogrid").is_dir()
    # A second install keeps the engineer's config.
    site.write_text(site.read_text() + "# edited\n")
    r = run(["install", "--root", str(installed)], tmp_path)
    assert r.returncode == 0 and "kept /etc/autogrid/site.yaml" in r.stdout
    assert site.read_text().endswith("# edited\n")

    r = run(["uninstall", "--root", str(installed)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (etc / "systemd/system/autogrid.service").exists()
    assert not (etc / "systemd/system/multi-user.target.wants/autogrid.service").exists()
    assert not (etc / "sysusers.d/autogrid.conf").exists()
    assert site.exists() and "kept /etc/autogrid" in r.stdout
    r = run(["uninstall", "--root", str(installed), "--purge"], tmp_path)
    assert r.returncode == 0 and not site.exists()


def test_install_with_a_missing_config_is_a_message(tmp_path: Path) -> None:
    r = run(["install", "--config", str(tmp_path / "missing.yaml"), "--root",
             str(tmp_path / "r")], tmp_path)
    assert r.returncode == 1 and "missing.yaml: no such file" in r.stderr
    assert "Traceback" not in r.stderr
