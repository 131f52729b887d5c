"""The command line as a site engineer meets it: `install --root` refuses a mistyped tree
and does not tell a staging tree to start the service, an install whose code the unit
cannot see (ProtectHome=yes) is refused with the way to do it, every command's --help
says what it does and its defaults, and `check` takes -c like the others."""

from __future__ import annotations

from pathlib import Path

from gateway.service.install import hidden_code
from tests.conftest import REPO
from tests.test_cli import run


def test_install_into_a_mistyped_root_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "imgae"
    r = run(["install", "--root", str(target), "--no-enable"], tmp_path)
    assert r.returncode == 1
    assert f"--root {target}: no such directory" in r.stderr and "Traceback" not in r.stderr
    assert not target.exists()
    r = run(["uninstall", "--root", str(target)], tmp_path)
    assert r.returncode == 1 and "no such directory" in r.stderr


def test_a_staged_install_says_what_to_do_on_the_target_not_to_start_here(
        tmp_path: Path) -> None:
    root = tmp_path / "image"
    root.mkdir()
    r = run(["install", "--root", str(root), "--no-enable"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"Staged under {root}; nothing was started" in r.stdout
    assert "start it:" not in r.stdout  # the instruction for a live install


def test_code_the_service_cannot_see_is_refused_with_the_way_to_install() -> None:
    why = hidden_code({"the virtual environment": Path("/home/ana/autogrid/.venv"),
                       "the autogrid source": Path("/home/ana/autogrid")})
    assert why is not None
    assert "under /home" in why and "ProtectHome=yes" in why
    assert "/opt/autogrid/venv/bin/pip install -e /opt/autogrid/src" in why
    assert hidden_code({"the autogrid source": Path("/root/src/autogrid")}) is not None
    assert hidden_code({"the virtual environment": Path("/opt/autogrid/venv"),
                        "the autogrid source": Path("/opt/autogrid/src")}) is None


def test_every_command_help_has_a_description_and_its_defaults(tmp_path: Path) -> None:
    for cmd in ("run", "sim", "demo", "check", "status", "console", "export", "install",
                "uninstall", "simulate", "forecast"):
        r = run([cmd, "--help"], tmp_path)
        assert r.returncode == 0, (cmd, r.stderr)
        lines = r.stdout.split("\n\n")
        assert len(lines) > 2 and lines[1].strip() and not lines[1].startswith(
            ("positional", "options")), (cmd, r.stdout)
    assert "(default: /)" in run(["install", "--help"], tmp_path).stdout
    demo_help = " ".join(run(["demo", "--help"], tmp_path).stdout.split())
    assert "(default: simulation.clock.speed of the config)" in demo_help


def test_check_takes_the_config_as_argument_or_with_c(tmp_path: Path) -> None:
    demo = str(REPO / "site_configs" / "demo.yaml")
    for args in (["check", demo], ["check", "-c", demo], ["check", "--config", demo]):
        r = run(args, tmp_path)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    r = run(["check"], tmp_path)
    assert r.returncode == 1 and "which config?" in r.stderr
    r = run(["check", demo, "-c", str(REPO / "site_configs" / "mixed.yaml")], tmp_path)
    assert r.returncode == 1 and "two configs given" in r.stderr
