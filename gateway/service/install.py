"""`autogrid install` / `autogrid uninstall`: the systemd units, user and config in place.

Files come from the source tree's systemd/ folder; the Exec lines get the path of the
autogrid this command runs from. ``--root DIR`` installs into a tree under DIR (tests,
image builds): every tool then runs with ``--root`` too and the machine is not touched.
Every step is printed; an existing site config is never overwritten.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent.parent / "systemd"
UNIT_EXE = "/opt/autogrid/venv/bin/autogrid"  # the Exec path in the shipped unit files
UNITS = ("autogrid.service", "autogrid@.service")

# (source under systemd/, destination under the root)
FILES = (
    ("autogrid.service", "etc/systemd/system/autogrid.service"),
    ("autogrid@.service", "etc/systemd/system/autogrid@.service"),
    ("sysusers.d/autogrid.conf", "etc/sysusers.d/autogrid.conf"),
    ("tmpfiles.d/autogrid.conf", "etc/tmpfiles.d/autogrid.conf"),
)
CONFIG = "etc/autogrid/site.yaml"
STATE = "var/lib/autogrid"


class InstallError(Exception):
    """Install or uninstall cannot go on; the message says why."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    i = sub.add_parser("install", help="install the systemd service, user and config (root)")
    i.add_argument("--root", default="/", help="install into this tree (default: /)")
    i.add_argument("-c", "--config", help="site config to install as /etc/autogrid/site.yaml "
                                          "(default: a starter config; never overwrites)")
    i.add_argument("--no-enable", action="store_true", help="do not enable the service")
    u = sub.add_parser("uninstall", help="disable and remove the systemd service (root)")
    u.add_argument("--root", default="/", help="uninstall from this tree (default: /)")
    u.add_argument("--purge", action="store_true",
                   help="also delete /etc/autogrid and /var/lib/autogrid (config, history)")


def autogrid_exe() -> str:
    """The command that starts this autogrid: its console script, else python -m."""
    script = Path(sys.executable).parent / "autogrid"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m gateway.cli"


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


Say = Callable[[str], None]


def _run(cmd: list[str], say: Say) -> bool:
    if shutil.which(cmd[0]) is None:
        say(f"  skipped: {cmd[0]} is not installed")
        return False
    say("  $ " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    out = (r.stdout + r.stderr).strip()
    for line in out.splitlines():
        say("    " + line)
    if r.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} failed (exit {r.returncode})")
    return True


def _check_root(root: Path) -> None:
    if root == Path("/") and os.geteuid() != 0:
        raise InstallError("needs root: run it with sudo (or give --root DIR for a tree)")


# What the unit's ProtectHome=yes hides from the service: code there cannot be run by it.
HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))


def code_paths() -> dict[str, Path]:
    """Where the service would run code from: this interpreter's environment and the
    package source (an editable install runs the checkout itself)."""
    return {"the virtual environment": Path(sys.prefix).resolve(),
            "the autogrid source": Path(__file__).resolve().parent.parent.parent}


def hidden_code(paths: dict[str, Path]) -> str | None:
    """Why the service could not start from ``paths`` (ProtectHome=yes), or None."""
    for what, path in paths.items():
        for hidden in HIDDEN_BY_PROTECT_HOME:
            if path == hidden or hidden in path.parents:
                return (f"{what} is under {hidden} ({path}), which the service cannot see "
                        f"(its unit has ProtectHome=yes). Install into /opt instead: "
                        f"sudo git clone <this repository> /opt/autogrid/src && "
                        f"sudo python3 -m venv /opt/autogrid/venv && "
                        f"sudo /opt/autogrid/venv/bin/pip install -e /opt/autogrid/src, then "
                        f"sudo /opt/autogrid/venv/bin/autogrid install")
    return None


def _check_target(root: Path) -> None:
    """A staging tree must exist: a mistyped --root would otherwise be created silently."""
    if root != Path("/") and not root.is_dir():
        raise InstallError(f"--root {root}: no such directory (create it first if a tree "
                           f"there is what you want)")


def install(root: Path, config: Path | None = None, enable: bool = True,
            say: Say = print, paths: dict[str, Path] | None = None) -> None:
    _check_root(root)
    why = hidden_code(code_paths() if paths is None else paths)
    if why:
        raise InstallError(why)
    if not SHIPPED.is_dir():
        raise InstallError(f"{SHIPPED}: the unit files ship with the source tree; install "
                           "autogrid from a checkout (pip install -e .) to use this command")
    if config is not None and not config.is_file():
        raise InstallError(f"{config}: no such file")
    _check_target(root)
    exe = autogrid_exe()
    offline = root != Path("/")
    say(f"Installing AutoGrid into {root} (daemon: {exe})")
    for src, dst in FILES:
        text = (SHIPPED / src).read_text(encoding="utf-8").replace(UNIT_EXE, exe)
        target = root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(0o644)
        say(f"  wrote /{dst}")
    cfg_target = root / CONFIG
    cfg_target.parent.mkdir(parents=True, exist_ok=True)
    if cfg_target.exists():
        say(f"  kept /{CONFIG} (already there)")
    else:
        shutil.copyfile(config or SHIPPED / "site.yaml", cfg_target)
        cfg_target.chmod(0o640)
        say(f"  wrote /{CONFIG} from {config or 'the starter config'}")
    rootopt = [f"--root={root}"] if offline else []
    _run(["systemd-sysusers", *rootopt, str(root / FILES[2][1])], say)
    _run(["systemd-tmpfiles", "--create", *rootopt, str(root / FILES[3][1])], say)
    if not offline and systemd_running():
        _run(["systemctl", "daemon-reload"], say)
    if enable:
        _run(["systemctl", *rootopt, "enable", "autogrid.service"], say)
    if offline:  # a staging tree (an image, a test): nothing runs here
        say(f"Staged under {root}; nothing was started. On the machine that boots this tree:")
        say(f"  check the config:  {exe} check /{CONFIG}")
        say("  then:              systemctl daemon-reload && systemctl start autogrid")
        return
    say("Done. Next:")
    say(f"  edit /{CONFIG}, check it:  autogrid check /{CONFIG}")
    say("  start it:                  systemctl start autogrid")
    say("  watch it:                  systemctl status autogrid; journalctl -u autogrid -f")
    if not systemd_running():
        say("  (systemd is not running here: nothing was started)")


def uninstall(root: Path, purge: bool = False, say: Say = print) -> None:
    _check_root(root)
    _check_target(root)
    offline = root != Path("/")
    rootopt = [f"--root={root}"] if offline else []
    say(f"Removing AutoGrid from {root}")
    unit = root / FILES[0][1]
    if unit.exists():
        if not offline and systemd_running():
            _run(["systemctl", "disable", "--now", "autogrid.service"], say)
        else:
            _run(["systemctl", *rootopt, "disable", "autogrid.service"], say)
    for _, dst in FILES:
        target = root / dst
        if target.exists():
            target.unlink()
            say(f"  removed /{dst}")
    if not offline and systemd_running():
        _run(["systemctl", "daemon-reload"], say)
    for rel in ("etc/autogrid", STATE):
        target = root / rel
        if not target.exists():
            continue
        if purge:
            shutil.rmtree(target)
            say(f"  removed /{rel}")
        else:
            say(f"  kept /{rel} (delete it with --purge)")
    say("  kept the system user autogrid (Debian never reuses a system uid; "
        "`userdel autogrid` removes it)")


def cmd_install(args: argparse.Namespace) -> int:
    try:
        install(Path(args.root).resolve(), Path(args.config) if args.config else None,
                enable=not args.no_enable)
    except InstallError as exc:
        print(f"autogrid install: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    try:
        uninstall(Path(args.root).resolve(), purge=args.purge)
    except InstallError as exc:
        print(f"autogrid uninstall: {exc}", file=sys.stderr)
        return 1
    return 0
